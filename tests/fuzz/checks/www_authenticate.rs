//! `WWW-Authenticate` parsing: never panics, errors point inside the header, and what parses
//! renders back to a header that parses to the same challenges.

use shared::identity::www_authenticate::{Challenge, parse, parse_all};

fn render(challenges: &[Challenge]) -> String {
    let mut out = Vec::new();
    for ch in challenges {
        let mut s = ch.scheme.clone();
        if let Some(t) = &ch.token68 {
            s.push(' ');
            s.push_str(t);
        }
        for (i, (k, v)) in ch.params.iter().enumerate() {
            // The parser takes `scheme token68, k=v` as one challenge: a comma keeps it so.
            s.push_str(if i == 0 && ch.token68.is_none() {
                " "
            } else {
                ", "
            });
            let escaped = v.replace('\\', "\\\\").replace('"', "\\\"");
            s.push_str(&format!("{k}=\"{escaped}\""));
        }
        out.push(s);
    }
    out.join(", ")
}

/// Characters a quoted-string may carry as they are (RFC 9110 qdtext, plus escapes).
fn quotable(v: &str) -> bool {
    v.chars().all(|c| c == '\t' || c == ' ' || !c.is_control())
}

/// Checks one input; panics when an invariant breaks.
pub fn run(data: &[u8]) {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    match parse(header) {
        Ok(challenges) => {
            for ch in &challenges {
                assert!(
                    !ch.scheme.is_empty(),
                    "a challenge without a scheme: {header:?}"
                );
                for (k, _) in &ch.params {
                    assert_eq!(k, &k.to_ascii_lowercase(), "param names are lower-cased");
                    assert!(
                        ch.param(&k.to_ascii_uppercase()).is_some(),
                        "param lookup ignores case: {header:?}"
                    );
                }
            }
            if challenges
                .iter()
                .all(|c| c.params.iter().all(|(_, v)| quotable(v)))
            {
                let again = render(&challenges);
                assert_eq!(
                    parse(&again).as_ref(),
                    Ok(&challenges),
                    "{header:?} rendered as {again:?}"
                );
            }
        }
        Err(e) => assert!(e.at <= header.len(), "{e} past the end of {header:?}"),
    }
    // Several header values: the same as parsing each one and joining the lists.
    let mid = (0..=header.len() / 2)
        .rev()
        .find(|&i| header.is_char_boundary(i))
        .unwrap_or(0);
    let (a, b) = header.split_at(mid);
    if let (Ok(mut first), Ok(second)) = (parse(a), parse(b)) {
        first.extend(second);
        assert_eq!(parse_all([a, b]), Ok(first));
    } else {
        assert!(parse_all([a, b]).is_err());
    }
}
