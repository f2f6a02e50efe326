//! Tenant emulator (filled by the emulator issue).
