//! Building the probe's requests and responses with rsip, and reading the few header
//! fields the probe needs from the peer's.

use std::net::SocketAddr;

use rsip::headers::UntypedHeader;
use rsip::prelude::HeadersExt;

const USER_AGENT: &str = concat!("callverify-probe/", env!("CARGO_PKG_VERSION"));
const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO";

/// A new branch parameter with RFC 3261's magic cookie.
pub fn new_branch() -> String {
    format!("z9hG4bK{:016x}", rand::random::<u64>())
}

pub fn new_tag() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// The identifiers and addresses of one call leg (a dialog once the peer's tag is known).
#[derive(Debug, Clone)]
pub struct Dialog {
    pub call_id: String,
    /// The From (UAC) or To (UAS) header value without the tag, and our tag.
    pub local_uri: String,
    pub local_tag: String,
    pub remote_uri: String,
    pub remote_tag: Option<String>,
    /// Request-URI of requests in the dialog (the peer's Contact once known).
    pub remote_target: rsip::Uri,
    /// Where requests are sent.
    pub remote_addr: SocketAddr,
    pub local_addr: SocketAddr,
    pub local_cseq: u32,
    /// Route header values of requests in the dialog (RFC 3261 §12.1: the Record-Route of
    /// the 2xx reversed for the UAC, of the INVITE as is for the UAS). Requests still go to
    /// `remote_addr`, the next hop the INVITE came through, which is the first route.
    pub route_set: Vec<String>,
}

impl Dialog {
    /// A request of ours in this call leg with a fresh branch; `cseq` None takes the next one.
    pub fn request(
        &mut self,
        method: rsip::Method,
        cseq: Option<u32>,
        body: Option<String>,
    ) -> rsip::Request {
        let cseq = cseq.unwrap_or_else(|| {
            self.local_cseq += 1;
            self.local_cseq
        });
        let mut headers = rsip::Headers::default();
        headers.push(
            rsip::headers::Via::new(format!(
                "SIP/2.0/UDP {};branch={};rport",
                self.local_addr,
                new_branch()
            ))
            .into(),
        );
        headers.push(rsip::headers::MaxForwards::new("70").into());
        headers.push(
            rsip::headers::From::new(format!("{};tag={}", self.local_uri, self.local_tag)).into(),
        );
        let to = match &self.remote_tag {
            Some(tag) => format!("{};tag={tag}", self.remote_uri),
            None => self.remote_uri.clone(),
        };
        headers.push(rsip::headers::To::new(to).into());
        headers.push(rsip::headers::CallId::new(self.call_id.clone()).into());
        headers.push(rsip::headers::CSeq::new(format!("{cseq} {method}")).into());
        for route in &self.route_set {
            headers.push(rsip::headers::Route::new(route.clone()).into());
        }
        headers
            .push(rsip::headers::Contact::new(format!("<sip:probe@{}>", self.local_addr)).into());
        headers.push(rsip::headers::UserAgent::new(USER_AGENT).into());
        if method == rsip::Method::Invite {
            headers.push(rsip::headers::Allow::new(ALLOW).into());
        }
        finish(headers, body, |headers, body| rsip::Request {
            method,
            uri: self.remote_target.clone(),
            version: rsip::Version::V2,
            headers,
            body,
        })
    }

    /// Whether a request from the peer belongs to this dialog (RFC 3261 §12.2.2): its
    /// Call-ID, the peer's tag in From and ours in To. Only the peer and whoever it told
    /// know our tag; a Call-ID alone may be guessed or overheard.
    pub fn matches(&self, request: &rsip::Request) -> bool {
        let call_id = request.call_id_header().ok().map(|c| c.value().to_string());
        let from_tag = request.from_header().ok().and_then(|f| tag_of(f.value()));
        call_id.as_deref() == Some(self.call_id.as_str())
            && from_tag == self.remote_tag
            && to_tag(request).as_deref() == Some(self.local_tag.as_str())
    }

    /// Learns the peer's tag and Contact from a response (UAC) or request (UAS).
    pub fn learn_remote(&mut self, message: &impl HeadersExt, tag: Option<String>) {
        if tag.is_some() {
            self.remote_tag = tag;
        }
        if let Some(uri) = message.contact_header().ok().and_then(contact_uri) {
            self.remote_target = uri;
        }
    }
}

/// A response to `request`, with our tag on To when the request had none.
pub fn response(
    request: &rsip::Request,
    code: u16,
    local_tag: &str,
    local_addr: SocketAddr,
    body: Option<String>,
) -> rsip::Response {
    let mut headers = rsip::Headers::default();
    for header in request.headers.iter() {
        match header {
            rsip::Header::Via(_)
            | rsip::Header::From(_)
            | rsip::Header::CallId(_)
            | rsip::Header::CSeq(_) => headers.push(header.clone()),
            rsip::Header::To(to) => {
                let value = if tag_of(to.value()).is_none() && code != 100 {
                    format!("{};tag={local_tag}", to.value())
                } else {
                    to.value().to_string()
                };
                headers.push(rsip::headers::To::new(value).into());
            }
            _ => {}
        }
    }
    headers.push(rsip::headers::Contact::new(format!("<sip:probe@{local_addr}>")).into());
    headers.push(rsip::headers::UserAgent::new(USER_AGENT).into());
    if request.method == rsip::Method::Invite || request.method == rsip::Method::Options {
        headers.push(rsip::headers::Allow::new(ALLOW).into());
    }
    finish(headers, body, |headers, body| rsip::Response {
        status_code: code.into(),
        version: rsip::Version::V2,
        headers,
        body,
    })
}

fn finish<T>(
    mut headers: rsip::Headers,
    body: Option<String>,
    build: impl FnOnce(rsip::Headers, Vec<u8>) -> T,
) -> T {
    let body = body.unwrap_or_default();
    if !body.is_empty() {
        headers.push(rsip::headers::ContentType::new("application/sdp").into());
    }
    headers.push(rsip::headers::ContentLength::new(body.len().to_string()).into());
    build(headers, body.into_bytes())
}

/// The `tag` parameter of a From or To header value.
pub fn tag_of(value: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (name, v) = p.trim().split_once('=')?;
        name.eq_ignore_ascii_case("tag")
            .then(|| v.trim().to_string())
    })
}

/// The Record-Route entries of a message, top first.
pub fn record_routes(message: &impl rsip::message::HasHeaders) -> Vec<String> {
    let mut routes = Vec::new();
    for header in message.headers().iter() {
        if let rsip::Header::RecordRoute(rr) = header {
            // URIs in angle brackets hold no commas, so a comma separates entries.
            routes.extend(
                rr.value()
                    .split(',')
                    .map(|r| r.trim().to_string())
                    .filter(|r| !r.is_empty()),
            );
        }
    }
    routes
}

/// The To tag of a message, if any.
pub fn to_tag(message: &impl HeadersExt) -> Option<String> {
    tag_of(message.to_header().ok()?.value())
}

/// Whether `ack` acknowledges `final_response` (or, the other way round, the response is a
/// retransmission of the final response `ack` acknowledged): the same Call-ID and CSeq
/// number, and the To tag the response gave, which only its receiver knows (RFC 3261
/// §12.2.2, §17.2.1).
pub fn acknowledges(ack: &rsip::Request, final_response: &rsip::Response) -> bool {
    fn ids(m: &impl HeadersExt) -> Option<(String, u32, String)> {
        let call_id = m.call_id_header().ok()?.value().to_string();
        Some((call_id, cseq(m)?.0, to_tag(m)?))
    }
    ids(ack).is_some() && ids(ack) == ids(final_response)
}

/// The branch of the top Via.
pub fn branch(message: &impl HeadersExt) -> Option<String> {
    message
        .via_header()
        .ok()?
        .value()
        .split(';')
        .skip(1)
        .find_map(|p| {
            let (name, v) = p.trim().split_once('=')?;
            name.eq_ignore_ascii_case("branch")
                .then(|| v.trim().to_string())
        })
}

/// CSeq number and method.
pub fn cseq(message: &impl HeadersExt) -> Option<(u32, String)> {
    let value = message.cseq_header().ok()?.value().to_string();
    let (number, method) = value.trim().split_once(char::is_whitespace)?;
    Some((number.parse().ok()?, method.trim().to_ascii_uppercase()))
}

fn contact_uri(contact: &rsip::headers::Contact) -> Option<rsip::Uri> {
    let value = contact.value();
    let inner = match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(';').next()?,
    };
    rsip::Uri::try_from(inner.trim()).ok()
}

/// A request derived from an INVITE of ours for the same transaction: the ACK of a non-2xx
/// final response (with that response's To) or a CANCEL (RFC 3261 §17.1.1.3, §9.1).
pub fn derived_from_invite(
    invite: &rsip::Request,
    method: rsip::Method,
    to: Option<&rsip::headers::To>,
) -> rsip::Request {
    let mut headers = rsip::Headers::default();
    for header in invite.headers.iter() {
        match header {
            rsip::Header::Via(_)
            | rsip::Header::From(_)
            | rsip::Header::CallId(_)
            | rsip::Header::MaxForwards(_) => headers.push(header.clone()),
            rsip::Header::Authorization(_) | rsip::Header::ProxyAuthorization(_) => {
                headers.push(header.clone())
            }
            rsip::Header::To(original) => headers.push(to.unwrap_or(original).clone().into()),
            rsip::Header::CSeq(_) => {
                let number = cseq(invite).map(|(n, _)| n).unwrap_or(1);
                headers.push(rsip::headers::CSeq::new(format!("{number} {method}")).into());
            }
            _ => {}
        }
    }
    finish(headers, None, |headers, body| rsip::Request {
        method,
        uri: invite.uri.clone(),
        version: rsip::Version::V2,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_back_with_their_dialog_fields() {
        let mut dialog = Dialog {
            call_id: "abc@probe".into(),
            local_uri: "<sip:probe@127.0.0.1>".into(),
            local_tag: "t1".into(),
            remote_uri: "<sip:100@127.0.0.1>".into(),
            remote_tag: None,
            remote_target: rsip::Uri::try_from("sip:100@127.0.0.1:5070").unwrap(),
            remote_addr: "127.0.0.1:5070".parse().unwrap(),
            local_addr: "127.0.0.1:5080".parse().unwrap(),
            local_cseq: 0,
            route_set: vec!["<sip:proxy@127.0.0.1:5090;lr>".into()],
        };
        let invite = dialog.request(rsip::Method::Invite, None, Some("v=0\r\n".into()));
        let parsed = match rsip::SipMessage::try_from(invite.to_string()).unwrap() {
            rsip::SipMessage::Request(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(cseq(&parsed), Some((1, "INVITE".into())));
        assert!(branch(&parsed).unwrap().starts_with("z9hG4bK"));
        assert_eq!(parsed.body, b"v=0\r\n");
        assert!(parsed
            .to_string()
            .contains("Route: <sip:proxy@127.0.0.1:5090;lr>\r\n"));
        let ok = response(&parsed, 200, "t2", dialog.local_addr, None);
        assert_eq!(to_tag(&ok).as_deref(), Some("t2"));
    }
}
