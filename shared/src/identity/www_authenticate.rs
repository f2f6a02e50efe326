//! `WWW-Authenticate` parsing per RFC 7235 §4.1 / RFC 9110 §11.6.1.
//!
//! A header value is a comma-separated list of challenges; each is a scheme followed by either a
//! token68 or a comma-separated list of `name=value` params (value a token or a quoted string
//! with `\` escapes). Because commas separate both challenges and params, an item after a comma
//! is a param when a `=` follows its name, else it starts a new challenge.

/// One challenge, e.g. `Bearer realm="…", client_id="…"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Auth scheme as sent (compare case-insensitively).
    pub scheme: String,
    /// A token68 credential (e.g. `Negotiate abc==`), if the challenge carries one.
    pub token68: Option<String>,
    /// Params in order; names lower-cased (they are case-insensitive), values unescaped.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The first param of that name (case-insensitive).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// True if the scheme matches (case-insensitive).
    pub fn is(&self, scheme: &str) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme)
    }
}

/// Why a header could not be parsed; `at` is the byte offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed WWW-Authenticate at byte {at}: {reason}")]
pub struct ParseError {
    /// Byte offset of the problem.
    pub at: usize,
    /// What was expected.
    pub reason: &'static str,
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

fn is_token68_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~+/".contains(&c)
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn peek_at(&self, i: usize) -> Option<u8> {
        self.s.get(i).copied()
    }
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn ws_end(&self, mut i: usize) -> usize {
        while matches!(self.peek_at(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        i
    }
    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    fn err<T>(&self, reason: &'static str) -> Result<T, ParseError> {
        Err(ParseError { at: self.i, reason })
    }
    fn quoted(&mut self) -> Result<String, ParseError> {
        // Caller saw the opening quote.
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return self.err("unterminated quoted string"),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(String::from_utf8_lossy(&out).into_owned());
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(c) => out.push(c),
                        None => return self.err("escape at end of header"),
                    }
                    self.i += 1;
                }
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }
    /// `=` then a token or quoted string, after the param name.
    fn param_value(&mut self) -> Result<String, ParseError> {
        self.skip_ws();
        if self.peek() != Some(b'=') {
            return self.err("expected '='");
        }
        self.i += 1;
        self.skip_ws();
        match self.peek() {
            Some(b'"') => self.quoted(),
            _ => match self.token() {
                Some(t) => Ok(t),
                None => self.err("expected a token or quoted string after '='"),
            },
        }
    }
    /// After an item: whitespace, then a comma or the end.
    fn end_of_item(&mut self) -> Result<(), ParseError> {
        self.skip_ws();
        match self.peek() {
            None => Ok(()),
            Some(b',') => {
                self.i += 1;
                Ok(())
            }
            Some(_) => self.err("expected ',' or end of header"),
        }
    }
}

/// Parses one header value into its challenges.
pub fn parse(header: &str) -> Result<Vec<Challenge>, ParseError> {
    let mut c = Cursor {
        s: header.as_bytes(),
        i: 0,
    };
    let mut out: Vec<Challenge> = Vec::new();
    loop {
        // Empty list elements (", ,") are allowed by the list rule.
        while matches!(c.peek(), Some(b' ' | b'\t' | b',')) {
            c.i += 1;
        }
        if c.peek().is_none() {
            return Ok(out);
        }
        let Some(name) = c.token() else {
            return c.err("expected an auth scheme or param name");
        };
        let after = c.ws_end(c.i);
        if c.peek_at(after) == Some(b'=') && !out.is_empty() {
            // `name=value`: another param of the current challenge.
            let value = c.param_value()?;
            if let Some(ch) = out.last_mut() {
                ch.params.push((name.to_ascii_lowercase(), value));
            }
            c.end_of_item()?;
            continue;
        }
        // A new challenge. Its scheme must be followed by a space, a comma or the end.
        let mut ch = Challenge {
            scheme: name,
            token68: None,
            params: Vec::new(),
        };
        if matches!(c.peek(), Some(b' ' | b'\t')) {
            c.skip_ws();
            if !matches!(c.peek(), None | Some(b',')) {
                first_item(&mut c, &mut ch)?;
            }
        }
        out.push(ch);
        c.end_of_item()?;
    }
}

/// The first item after a scheme: a token68 or the first param.
fn first_item(c: &mut Cursor<'_>, ch: &mut Challenge) -> Result<(), ParseError> {
    let start = c.i;
    while c.peek().is_some_and(|b| is_tchar(b) || is_token68_char(b)) {
        c.i += 1;
    }
    if c.i == start {
        return c.err("expected a token68 or param after the scheme");
    }
    let word = String::from_utf8_lossy(&c.s[start..c.i]).into_owned();
    let eq = c.ws_end(c.i);
    let is_param = c.peek_at(eq) == Some(b'=') && word.bytes().all(is_tchar) && {
        // `name=value` has a token or quote after the '='; token68 has only '=' padding.
        let v = c.ws_end(eq + 1);
        c.peek_at(v).is_some_and(|b| b == b'"' || is_tchar(b))
    };
    if is_param {
        let value = c.param_value()?;
        ch.params.push((word.to_ascii_lowercase(), value));
    } else {
        if !word.bytes().all(is_token68_char) {
            c.i = start;
            return c.err("invalid token68");
        }
        let mut t = word;
        while c.peek() == Some(b'=') {
            t.push('=');
            c.i += 1;
        }
        ch.token68 = Some(t);
    }
    Ok(())
}

/// Parses every value of a header that may be sent several times.
pub fn parse_all<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Challenge>, ParseError> {
    let mut out = Vec::new();
    for v in values {
        out.extend(parse(v)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> String {
        let p = format!(
            "{}/../../shared/fixtures/www-authenticate/FluidFramework_parseAuthErrorClaims_insufficient_claims.txt",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(p).unwrap().trim().to_owned()
    }

    #[test]
    fn sharepoint_claims_challenge() {
        let cs = parse(&fixture()).unwrap();
        assert_eq!(cs.len(), 1);
        let b = &cs[0];
        assert!(b.is("bearer"));
        assert_eq!(
            b.param("realm"),
            Some("6c482541-f706-4168-9e58-8e35a9992f58")
        );
        assert_eq!(
            b.param("client_id"),
            Some("00000003-0000-0ff1-ce00-000000000000")
        );
        assert_eq!(
            b.param("authorization_uri"),
            Some("https://login.windows.net/common/oauth2/authorize")
        );
        assert_eq!(b.param("error"), Some("insufficient_claims"));
        // Commas inside a quoted value do not split it.
        assert!(
            b.param("trusted_issuers")
                .unwrap()
                .contains("@*,D3776938-3DBA-481F-A652-4BEDFCAB7CD8@*,https://sts.windows.net/*/,")
        );
        assert!(b.param("claims").unwrap().ends_with("fX0="));
    }

    #[test]
    fn ntlm_then_bearer_in_one_value() {
        let cs = parse(r#"NTLM, Bearer realm="r1",client_id="00000003-0000-0ff1-ce00-000000000000",trusted_issuers="a@*,b@*",authorization_uri="https://login.windows.net/common/oauth2/authorize""#).unwrap();
        assert_eq!(cs.len(), 2);
        assert!(cs[0].is("NTLM") && cs[0].params.is_empty() && cs[0].token68.is_none());
        assert_eq!(cs[1].param("realm"), Some("r1"));
        assert_eq!(cs[1].param("trusted_issuers"), Some("a@*,b@*"));
    }

    #[test]
    fn reordered_extra_and_unquoted_params_and_case() {
        let cs = parse(r#"bearer Client_ID = "c", foo=bar, Realm="r2" , x="y""#).unwrap();
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].param("realm"), Some("r2"));
        assert_eq!(cs[0].param("client_id"), Some("c"));
        assert_eq!(cs[0].param("foo"), Some("bar"));
        assert_eq!(cs[0].params.len(), 4);
    }

    #[test]
    fn escapes_in_quoted_strings() {
        let cs = parse(r#"Bearer realm="a\"b\\c,d", error_description="x""#).unwrap();
        assert_eq!(cs[0].param("realm"), Some(r#"a"b\c,d"#));
        assert_eq!(cs[0].param("error_description"), Some("x"));
    }

    #[test]
    fn token68_and_several_challenges() {
        let cs = parse(r#"Negotiate abc+/de==, Basic realm="x", Bearer"#).unwrap();
        assert_eq!(cs.len(), 3);
        assert_eq!(cs[0].token68.as_deref(), Some("abc+/de=="));
        assert_eq!(cs[1].param("realm"), Some("x"));
        assert!(cs[2].is("Bearer") && cs[2].params.is_empty());
        let cs = parse("Negotiate abc=").unwrap();
        assert_eq!(cs[0].token68.as_deref(), Some("abc="));
    }

    #[test]
    fn multiple_header_values() {
        let cs = parse_all(["NTLM", r#"Bearer realm="r3", client_id="c""#, "Negotiate"]).unwrap();
        let schemes: Vec<_> = cs.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["NTLM", "Bearer", "Negotiate"]);
        assert_eq!(cs[1].param("realm"), Some("r3"));
    }

    #[test]
    fn missing_realm_is_just_absent() {
        let cs = parse(r#"Bearer client_id="c", authorization_uri="u""#).unwrap();
        assert_eq!(cs[0].param("realm"), None);
    }

    #[test]
    fn malformed_headers_are_errors() {
        for bad in [
            r#"Bearer realm="open"#,
            "Bearer a=b, =c",
            r#"Bearer realm="a" junk"#,
            "=x",
            r#"Bearer realm="a\"#,
            "Bearer @@@",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse("").unwrap(), vec![]);
        // The grammar reads a bare `name=` as a token68, not as an empty param.
        let cs = parse("Bearer realm=").unwrap();
        assert_eq!(
            (cs[0].token68.as_deref(), cs[0].param("realm")),
            (Some("realm="), None)
        );
    }
}
