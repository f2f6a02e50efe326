//! Test support: starting moto and the emulator, loading events.
