//! Microsoft error bodies: identity (`MsError::from_json`), SharePoint and Graph
//! (`upload::error::MicrosoftError::parse`), and the code table (`shared::microsoft`).
//!
//! Input: two status bytes, then the body. Invariants: nothing panics; the parsed error keeps
//! the status; an AADSTS code found is one the text contains; whatever the body, classification
//! answers.

use http::HeaderMap;
use shared::identity::error::MsError;
use shared::microsoft::{MsCode, RefreshFailure, System, upload_action};
use shared::upload::error::MicrosoftError;

/// Checks one input; panics when an invariant breaks.
pub fn run(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let status = 100 + u16::from_be_bytes([data[0], data[1]]) % 500;
    let body = &data[2..];

    let ms = MicrosoftError::parse(status, &HeaderMap::new(), body);
    let _ = ms.sp_code();
    for system in [System::SharePoint, System::Graph] {
        let _ = ms.action(system);
        let _ = upload_action(system, ms.code.as_deref(), None);
    }

    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    if let Some(e) = MsError::from_json(status, text) {
        assert_eq!(e.status, status);
        let _ = e.code_number();
        let _ = e.class();
        let class = RefreshFailure::classify(&e.error, e.code.as_deref(), Some(status));
        let _ = (class.is_retryable(), class.lambda_error_type());
    }
    if let Some(code) = MsCode::find_in(text) {
        assert!(
            text.contains(&code.number().to_string()),
            "{code:?} is not in {text:?}"
        );
        let _ = code.row();
    }
    if let Some(code) = MsCode::parse(text) {
        assert!(
            text.contains(&code.number().to_string()),
            "{code:?} is not in {text:?}"
        );
    }
}
