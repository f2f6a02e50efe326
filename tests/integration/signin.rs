//! oauth-callback's one mapping from sign-in failures to answers: every reason, its status and
//! its `error` code (the table in `docs/errors.md`). The flows themselves run end to end in
//! `lifecycle.rs`; this pins the answers a flow can only reach with a faulty Microsoft or store.

use oauth_callback::api_error;
use shared::{
    access::AccessError,
    identity::MsError,
    oauth::{
        redirect::{CallbackError, ProviderError, RedirectError},
        state::StateError,
    },
    secrets::SecretError,
    signin::{Reason, SignInError},
};

fn answer(reason: Reason) -> (u16, &'static str) {
    let e = api_error(SignInError::about("c1", reason));
    (e.status().as_u16(), e.code())
}

#[test]
fn every_sign_in_failure_has_one_kind() {
    let at = time::OffsetDateTime::UNIX_EPOCH;
    let provider = |word: &str| {
        Reason::Provider(Box::new(ProviderError {
            error: word.into(),
            description: None,
            uri: None,
        }))
    };
    let access = |e| Reason::Access(Box::new(e));
    let cases: Vec<(Reason, (u16, &str))> = vec![
        (Reason::BadInput("x".into()), (400, "bad_request")),
        (Reason::TooLarge("x".into()), (413, "payload_too_large")),
        (
            Reason::Redirect(RedirectError::NoHost),
            (400, "bad_request"),
        ),
        (
            Reason::Callback(CallbackError::MissingState),
            (400, "bad_request"),
        ),
        (
            Reason::State(StateError::MissingCookie),
            (400, "bad_request"),
        ),
        (Reason::State(StateError::Tampered), (400, "bad_request")),
        (
            Reason::State(StateError::CookieMismatch),
            (403, "forbidden"),
        ),
        (Reason::State(StateError::Replayed), (409, "replayed")),
        (provider("access_denied"), (424, "needs_consent")),
        (provider("consent_required"), (424, "needs_consent")),
        (provider("interaction_required"), (424, "needs_consent")),
        (provider("temporarily_unavailable"), (503, "unavailable")),
        (provider("server_error"), (503, "unavailable")),
        (provider("invalid_scope"), (400, "bad_request")),
        (Reason::TokenFlowRefused, (400, "bad_request")),
        (Reason::AppOnly, (400, "bad_request")),
        (Reason::NotAnAddIn, (401, "unauthorized")),
        (Reason::HostMismatch, (401, "unauthorized")),
        (Reason::NoServices, (400, "bad_request")),
        (
            Reason::ContextTokenInvalid("expired".into()),
            (401, "unauthorized"),
        ),
        (Reason::ConnectionChanged, (409, "conflict")),
        (
            access(AccessError::NotFound {
                connection: "c1".into(),
            }),
            (404, "connection_not_found"),
        ),
        (
            access(AccessError::NeedsConsent {
                connection: "c1".into(),
                code: "AADSTS700082".into(),
                at,
                ms: None,
            }),
            (424, "needs_consent"),
        ),
        (
            access(AccessError::Throttled {
                connection: "c1".into(),
                retry_after: None,
                detail: "x".into(),
            }),
            (503, "throttled"),
        ),
        (
            access(AccessError::Transient {
                connection: "c1".into(),
                retry_after: None,
                detail: "x".into(),
            }),
            (503, "unavailable"),
        ),
        (
            access(AccessError::Misconfigured {
                connection: "c1".into(),
                reason: "x".into(),
            }),
            (500, "misconfigured"),
        ),
        (
            access(AccessError::Store {
                connection: "c1".into(),
                source: SecretError::Throttled {
                    name: "arn:aws:secretsmanager:x".into(),
                    retry_after: None,
                },
            }),
            (503, "unavailable"),
        ),
        (
            Reason::Misconfigured("no key".into()),
            (500, "misconfigured"),
        ),
        (Reason::CodeRejected(None), (400, "bad_request")),
        (Reason::Unavailable("timeout".into()), (503, "unavailable")),
        (Reason::NoRefreshToken, (502, "bad_gateway")),
        (Reason::ConnectionGone, (404, "connection_not_found")),
        (Reason::StoreFailed("conflict".into()), (503, "unavailable")),
    ];
    for (reason, want) in cases {
        let shown = format!("{reason:?}");
        assert_eq!(answer(reason), want, "{shown}");
    }
}

#[test]
fn answers_name_the_connection_and_microsoft_code_but_no_internals() {
    let ms = MsError {
        status: 400,
        error: "invalid_grant".into(),
        code: Some("AADSTS70008".into()),
        description: Some("AADSTS70008: The code has expired.".into()),
        correlation_id: None,
        trace_id: None,
        body: "{}".into(),
    };
    let e = api_error(SignInError::about(
        "c1",
        Reason::CodeRejected(Some(Box::new(ms))),
    ));
    let body = e.to_json();
    assert_eq!(body["microsoft_code"], "AADSTS70008");
    assert_eq!(body["connection"], "c1");

    // A store failure's text (an ARN) and a misconfiguration's reason stay in the logs.
    let store = api_error(SignInError::about(
        "c1",
        Reason::Access(Box::new(AccessError::Store {
            connection: "c1".into(),
            source: SecretError::Throttled {
                name: "arn:aws:secretsmanager:us-east-1:123456789012:secret:x".into(),
                retry_after: None,
            },
        })),
    ));
    assert!(!store.to_json().to_string().contains("arn:"), "{store}");
    let mis = api_error(SignInError::about(
        "c1",
        Reason::Misconfigured("client_secret missing in spbridge/apps/x".into()),
    ));
    assert!(
        !mis.to_json().to_string().contains("spbridge/apps"),
        "{mis}"
    );
}
