//! Digest authentication (RFC 3261 §22, RFC 2617/7616) of a request the peer challenged with
//! 401 (WWW-Authenticate) or 407 (Proxy-Authenticate).
//!
//! The challenge is read from the raw header and the hashes are computed here: rsip's typed
//! challenge takes a single qop value (so the common `qop="auth,auth-int"` fails to parse),
//! its -sess HA1 leaves out `:nonce:cnonce`, and it writes `qop` quoted where RFC 7616's
//! grammar has a token.

use rsip::headers::UntypedHeader;
use sha2::Digest as _;

#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error("the peer asks for authentication but no --user/--password was given")]
    NoCredentials,
    #[error("the peer's {code} has no usable challenge: {reason}")]
    BadChallenge { code: u16, reason: String },
}

/// The hash algorithms of RFC 7616 that SIP peers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
}

impl Algorithm {
    fn parse(token: &str) -> Option<Self> {
        Some(match token.to_ascii_uppercase().as_str() {
            "MD5" => Self::Md5,
            "MD5-SESS" => Self::Md5Sess,
            "SHA-256" => Self::Sha256,
            "SHA-256-SESS" => Self::Sha256Sess,
            _ => return None,
        })
    }

    fn hash(self, data: &str) -> String {
        match self {
            Self::Md5 | Self::Md5Sess => hex::encode(md5::Md5::digest(data.as_bytes())),
            Self::Sha256 | Self::Sha256Sess => hex::encode(sha2::Sha256::digest(data.as_bytes())),
        }
    }

    fn is_session(self) -> bool {
        matches!(self, Self::Md5Sess | Self::Sha256Sess)
    }
}

/// One Digest challenge as the peer sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    /// The algorithm token as written (echoed back), None when absent (MD5).
    pub algorithm: Option<String>,
    /// The qop options offered, None when the challenge has no qop (RFC 2069 form).
    pub qop: Option<Vec<String>>,
    /// The previous credentials were right but the nonce expired (RFC 7616 §3.3).
    pub stale: bool,
}

impl Challenge {
    /// Parses a WWW-Authenticate / Proxy-Authenticate value (`Digest realm="…", …`).
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        let (scheme, rest) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("digest") {
            return Err(format!(
                "the {scheme} scheme is not supported (only Digest)"
            ));
        }
        let params = params(rest);
        let get = |name: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        Ok(Self {
            realm: get("realm").ok_or("no realm")?,
            nonce: get("nonce").ok_or("no nonce")?,
            opaque: get("opaque"),
            algorithm: get("algorithm"),
            qop: get("qop").map(|q| {
                q.split(',')
                    .map(|o| o.trim().to_ascii_lowercase())
                    .filter(|o| !o.is_empty())
                    .collect()
            }),
            stale: get("stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
        })
    }
}

/// The `name=value` pairs of a challenge, with quoted values unquoted (commas inside quotes
/// are part of the value, as in `qop="auth,auth-int"`).
fn params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if name.is_empty() && chars.peek().is_none() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => value.extend(chars.next()),
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
                value = value.trim().to_string();
            }
        }
        out.push((name.trim().to_string(), value));
    }
}

/// What the response hash is computed from (RFC 7616 §3.4.1–3.4.3).
pub struct Input<'a> {
    pub algorithm: Algorithm,
    pub user: &'a str,
    pub realm: &'a str,
    pub password: &'a str,
    pub nonce: &'a str,
    pub cnonce: &'a str,
    pub nc: u32,
    /// `auth`, or None for the RFC 2069 form of a challenge without qop.
    pub qop: Option<&'a str>,
    pub method: &'a str,
    pub uri: &'a str,
}

/// The `response` value: KD(HA1, nonce:nc:cnonce:qop:HA2), or KD(HA1, nonce:HA2) without qop.
pub fn response(input: &Input) -> String {
    let alg = input.algorithm;
    let mut ha1 = alg.hash(&format!(
        "{}:{}:{}",
        input.user, input.realm, input.password
    ));
    if alg.is_session() {
        ha1 = alg.hash(&format!("{ha1}:{}:{}", input.nonce, input.cnonce));
    }
    let ha2 = alg.hash(&format!("{}:{}", input.method, input.uri));
    match input.qop {
        Some(qop) => alg.hash(&format!(
            "{ha1}:{}:{:08x}:{}:{qop}:{ha2}",
            input.nonce, input.nc, input.cnonce
        )),
        None => alg.hash(&format!("{ha1}:{}:{ha2}", input.nonce)),
    }
}

/// An answer to one challenge: the header for the retried request and the challenge's realm
/// and staleness, by which the caller keeps credentials across challenges.
#[derive(Debug, Clone)]
pub struct Answer {
    pub realm: String,
    pub stale: bool,
    pub header: rsip::Header,
}

/// The Authorization (401) or Proxy-Authorization (407) headers answering `challenge`, one per
/// challenged realm (the first usable challenge of each realm).
pub fn authorize(
    challenge: &rsip::Response,
    request: &rsip::Request,
    user: Option<&str>,
    password: Option<&str>,
) -> Result<Vec<Answer>, DigestError> {
    let code = challenge.status_code.code();
    let bad = |reason: String| DigestError::BadChallenge { code, reason };
    let values: Vec<String> = challenge
        .headers
        .iter()
        .filter_map(|h| match (h, code) {
            (rsip::Header::WwwAuthenticate(w), 401) => Some(w.value().to_string()),
            (rsip::Header::ProxyAuthenticate(p), 407) => Some(p.value().to_string()),
            _ => None,
        })
        .collect();
    if values.is_empty() {
        return Err(bad("no WWW-Authenticate/Proxy-Authenticate header".into()));
    }
    let (Some(user), Some(password)) = (user, password) else {
        return Err(DigestError::NoCredentials);
    };
    let mut answers: Vec<Answer> = Vec::new();
    let mut last_problem = String::new();
    for value in values {
        match answer(&value, code, request, user, password) {
            Ok(answer) if !answers.iter().any(|a| a.realm == answer.realm) => answers.push(answer),
            Ok(_) => {}
            Err(problem) => last_problem = problem,
        }
    }
    if answers.is_empty() {
        return Err(bad(last_problem));
    }
    Ok(answers)
}

fn answer(
    value: &str,
    code: u16,
    request: &rsip::Request,
    user: &str,
    password: &str,
) -> Result<Answer, String> {
    let challenge = Challenge::parse(value)?;
    let algorithm = match &challenge.algorithm {
        None => Algorithm::Md5,
        Some(token) => Algorithm::parse(token)
            .ok_or_else(|| format!("the digest algorithm {token} is not supported"))?,
    };
    let qop = match &challenge.qop {
        None => None,
        Some(options) if options.iter().any(|o| o == "auth") => Some("auth"),
        Some(options) => {
            return Err(format!(
                "it offers only qop={} (integrity protection of the body), which the probe \
                 does not support; allow qop=auth",
                options.join(",")
            ))
        }
    };
    let cnonce = format!("{:016x}", rand::random::<u64>());
    let nc = 1;
    let uri = request.uri.to_string();
    let method = request.method.to_string();
    let digest = response(&Input {
        algorithm,
        user,
        realm: &challenge.realm,
        password,
        nonce: &challenge.nonce,
        cnonce: &cnonce,
        nc,
        qop,
        method: &method,
        uri: &uri,
    });
    let mut text = format!(
        "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{digest}\"",
        quote(user),
        quote(&challenge.realm),
        quote(&challenge.nonce),
    );
    if let Some(token) = &challenge.algorithm {
        text.push_str(&format!(", algorithm={token}"));
    }
    if let Some(opaque) = &challenge.opaque {
        text.push_str(&format!(", opaque=\"{}\"", quote(opaque)));
    }
    if let Some(qop) = qop {
        text.push_str(&format!(", qop={qop}, nc={nc:08x}, cnonce=\"{cnonce}\""));
    } else if algorithm.is_session() {
        text.push_str(&format!(", cnonce=\"{cnonce}\""));
    }
    let header = if code == 407 {
        rsip::headers::ProxyAuthorization::new(text).into()
    } else {
        rsip::headers::Authorization::new(text).into()
    };
    Ok(Answer {
        realm: challenge.realm,
        stale: challenge.stale,
        header,
    })
}

/// A quoted-string's content with `"` and `\` escaped.
fn quote(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 2617 §3.5's worked example (MD5, qop=auth).
    fn rfc2617(algorithm: Algorithm) -> Input<'static> {
        Input {
            algorithm,
            user: "Mufasa",
            realm: "testrealm@host.com",
            password: "Circle Of Life",
            nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            cnonce: "0a4f113b",
            nc: 1,
            qop: Some("auth"),
            method: "GET",
            uri: "/dir/index.html",
        }
    }

    #[test]
    fn md5_with_qop_auth_matches_rfc_2617() {
        assert_eq!(
            response(&rfc2617(Algorithm::Md5)),
            "6629fae49393a05397450978507c4ef1"
        );
    }

    /// RFC 7616 §3.9.1: the same request answered with SHA-256 and with MD5.
    #[test]
    fn sha256_and_md5_match_rfc_7616() {
        let input = |algorithm| Input {
            algorithm,
            user: "Mufasa",
            realm: "http-auth@example.org",
            password: "Circle of Life",
            nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            cnonce: "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            nc: 1,
            qop: Some("auth"),
            method: "GET",
            uri: "/dir/index.html",
        };
        assert_eq!(
            response(&input(Algorithm::Sha256)),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
        assert_eq!(
            response(&input(Algorithm::Md5)),
            "8ca523f5e9506fed4657c9700eebdbec"
        );
    }

    /// -sess: HA1 = H(H(user:realm:password):nonce:cnonce) (RFC 7616 §3.4.2).
    #[test]
    fn session_algorithms_hash_nonce_and_cnonce_into_ha1() {
        let input = rfc2617(Algorithm::Md5Sess);
        let h = |s: &str| Algorithm::Md5.hash(s);
        let ha1 = h(&format!(
            "{}:{}:{}",
            h("Mufasa:testrealm@host.com:Circle Of Life"),
            input.nonce,
            input.cnonce
        ));
        let ha2 = h("GET:/dir/index.html");
        let expected = h(&format!(
            "{ha1}:{}:00000001:{}:auth:{ha2}",
            input.nonce, input.cnonce
        ));
        assert_eq!(response(&input), expected);
        assert_ne!(response(&input), response(&rfc2617(Algorithm::Md5)));
        let sha = rfc2617(Algorithm::Sha256Sess);
        assert_eq!(response(&sha).len(), 64);
        assert_ne!(response(&sha), response(&rfc2617(Algorithm::Sha256)));
    }

    /// Without qop (RFC 2069): KD(HA1, nonce:HA2).
    #[test]
    fn no_qop_hashes_nonce_and_ha2_only() {
        let input = Input {
            qop: None,
            ..rfc2617(Algorithm::Md5)
        };
        let h = |s: &str| Algorithm::Md5.hash(s);
        let expected = h(&format!(
            "{}:{}:{}",
            h("Mufasa:testrealm@host.com:Circle Of Life"),
            input.nonce,
            h("GET:/dir/index.html")
        ));
        assert_eq!(response(&input), expected);
    }

    #[test]
    fn a_challenge_with_a_qop_list_parses() {
        let c = Challenge::parse(
            r#"Digest realm="asterisk", nonce="1a2b", qop="auth,auth-int", opaque="x,y", algorithm=MD5-sess, stale=TRUE"#,
        )
        .unwrap();
        assert_eq!(c.realm, "asterisk");
        assert_eq!(c.nonce, "1a2b");
        assert_eq!(c.opaque.as_deref(), Some("x,y"));
        assert_eq!(c.algorithm.as_deref(), Some("MD5-sess"));
        assert_eq!(
            c.qop,
            Some(vec!["auth".to_string(), "auth-int".to_string()])
        );
        assert!(c.stale);
        assert!(Challenge::parse("Basic realm=\"x\"").is_err());
    }

    fn challenged(code: u16, header: &str) -> (rsip::Response, rsip::Request) {
        let request = rsip::Request::try_from(
            "INVITE sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKa\r\n\
             From: <sip:qa@127.0.0.1>;tag=1\r\nTo: <sip:100@127.0.0.1>\r\nCall-ID: c\r\n\
             CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        let name = if code == 401 {
            "WWW-Authenticate"
        } else {
            "Proxy-Authenticate"
        };
        let reason = if code == 401 {
            "Unauthorized"
        } else {
            "Proxy Authentication Required"
        };
        let response = rsip::Response::try_from(format!(
            "SIP/2.0 {code} {reason}\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKa\r\n\
             From: <sip:qa@127.0.0.1>;tag=1\r\nTo: <sip:100@127.0.0.1>;tag=2\r\nCall-ID: c\r\n\
             CSeq: 1 INVITE\r\n{name}: {header}\r\nContent-Length: 0\r\n\r\n"
        ))
        .unwrap();
        (response, request)
    }

    fn param<'a>(text: &'a str, name: &str) -> &'a str {
        let start = text.find(&format!(" {name}=")).unwrap() + name.len() + 2;
        text[start..].split(',').next().unwrap()
    }

    #[test]
    fn the_authorization_prefers_auth_and_writes_qop_unquoted() {
        let (challenge, request) = challenged(
            401,
            r#"Digest realm="r", nonce="n1", qop="auth,auth-int", algorithm=MD5, opaque="o""#,
        );
        let answers = authorize(&challenge, &request, Some("qa"), Some("secret")).unwrap();
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].realm, "r");
        let rsip::Header::Authorization(header) = &answers[0].header else {
            panic!("{:?}", answers[0].header);
        };
        let text = header.value().to_string();
        assert!(
            text.contains(", qop=auth, nc=00000001, cnonce=\""),
            "{text}"
        );
        assert!(text.contains("opaque=\"o\""), "{text}");
        let cnonce = param(&text, "cnonce").trim_matches('"');
        let expected = response(&Input {
            algorithm: Algorithm::Md5,
            user: "qa",
            realm: "r",
            password: "secret",
            nonce: "n1",
            cnonce,
            nc: 1,
            qop: Some("auth"),
            method: "INVITE",
            uri: "sip:100@127.0.0.1",
        });
        assert_eq!(param(&text, "response"), format!("\"{expected}\""));
    }

    #[test]
    fn a_407_is_answered_with_proxy_authorization() {
        let (challenge, request) = challenged(407, r#"Digest realm="p", nonce="n""#);
        let answers = authorize(&challenge, &request, Some("qa"), Some("secret")).unwrap();
        assert!(matches!(
            answers[0].header,
            rsip::Header::ProxyAuthorization(_)
        ));
    }

    #[test]
    fn a_challenge_offering_only_auth_int_is_a_clear_error() {
        let (challenge, request) =
            challenged(401, r#"Digest realm="r", nonce="n", qop="auth-int""#);
        let error = authorize(&challenge, &request, Some("qa"), Some("secret")).unwrap_err();
        assert!(error.to_string().contains("auth-int"), "{error}");
        let (challenge, request) =
            challenged(401, r#"Digest realm="r", nonce="n", algorithm=SHA-512-256"#);
        let error = authorize(&challenge, &request, Some("qa"), Some("secret")).unwrap_err();
        assert!(error.to_string().contains("SHA-512-256"), "{error}");
    }
}
