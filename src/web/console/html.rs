//! The console's pages: plain server-rendered HTML (no build step, no script), every
//! value escaped.

use std::fmt::Write;

use crate::domain::clock::rfc3339;
use crate::domain::status::{CallOutcome, CallerMatch, EntryMethod, RequestStatus};
use crate::support::request::{AuditEntry, RequestHistory};
use crate::web::request_view::RequestView;

/// Escape text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// How the console shows a time: in the staff member's zone, with how long ago, and the UTC
/// timestamp on hover and for machines (`<time datetime>`).
pub struct Times {
    pub zone: jiff::tz::TimeZone,
    pub now: i64,
}

impl Times {
    pub fn show(&self, ms: i64) -> String {
        let utc = rfc3339(ms);
        let local = jiff::Timestamp::from_millisecond(ms)
            .map(|t| {
                t.to_zoned_datetime(self.zone.clone())
                    .strftime("%a %-d %b %Y %H:%M %Z")
                    .to_string()
            })
            .unwrap_or_else(|_| utc.clone());
        format!(
            "<time datetime=\"{utc}\" title=\"{utc}\">{} <span class=\"ago\">({})</span></time>",
            escape(&local),
            ago(self.now - ms)
        )
    }
}

/// `ms` of age in words: "just now", "5 min ago", "2 h ago", "3 days ago", "in 10 min".
fn ago(ms: i64) -> String {
    let (ahead, ms) = (ms < 0, ms.abs());
    let minutes = ms / 60_000;
    let span = match minutes {
        0 => return "just now".into(),
        1..=59 => format!("{minutes} min"),
        60..=2879 => format!("{} h", minutes / 60),
        _ => format!("{} days", minutes / 1440),
    };
    if ahead {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;max-width:72rem;color:#222}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.4rem .6rem;\
border-bottom:1px solid #ddd}.overdue{color:#b00;font-weight:bold}.ago{color:#555}nav a{margin-right:1rem}\
.error{color:#b00}form.inline{display:inline}label{display:block;margin:.5rem 0}\
header{display:flex;justify-content:space-between;align-items:center}\
:focus-visible{outline:3px solid #0050b3;outline-offset:2px}\
@media (max-width:900px){body{margin:1rem}.scroll{overflow-x:auto}}";

/// A whole page; `signed_in` adds the header with the sign-out form.
pub fn page(title: &str, signed_in: Option<(&str, &str)>, body: &str) -> String {
    let header = match signed_in {
        Some((username, csrf)) => format!(
            "<header><h1>{}</h1><form class=\"inline\" method=\"post\" action=\"/console/logout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">{} \
             <button id=\"sign-out\">Sign out</button></form></header>",
            escape(title),
            escape(csrf),
            escape(username)
        ),
        None => format!("<h1>{}</h1>", escape(title)),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · callverify support</title><style>{STYLE}</style></head>\
         <body>{header}{body}</body></html>",
        escape(title)
    )
}

pub fn login(csrf: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" id=\"error\">{}</p>", escape(e)))
        .unwrap_or_default();
    page(
        "Support console",
        None,
        &format!(
            "{error}<form method=\"post\" action=\"/console/login\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <label>Name <input name=\"username\" id=\"username\" autocomplete=\"username\" required></label>\
             <label>Password <input name=\"password\" id=\"password\" type=\"password\" \
             autocomplete=\"current-password\" required></label>\
             <button id=\"sign-in\">Sign in</button></form>",
            escape(csrf)
        ),
    )
}

/// A page of the queue as the console shows it.
pub struct Queue<'a> {
    pub requests: &'a [RequestView],
    /// `open`, `approved`, `rejected` or `all`.
    pub status: &'a str,
    /// The search as typed.
    pub search: &'a str,
    /// Why the search was not run.
    pub problem: Option<&'a str>,
    /// Requests per status that the search finds.
    pub counts: &'a [(RequestStatus, i64)],
    /// This is a later page: offer the first.
    pub first_page: bool,
    /// The cursor of the next page, if there is one.
    pub next: Option<String>,
    pub times: &'a Times,
    /// Offer the audit log.
    pub admin: bool,
}

/// A link to the queue with these parameters.
fn queue_link(status: &str, search: &str, cursor: Option<&str>) -> String {
    let mut link = format!("/console/?status={status}");
    if !search.is_empty() {
        link.push_str("&amp;q=");
        link.push_str(&escape(&super::urlencode(search)));
    }
    if let Some(cursor) = cursor {
        link.push_str("&amp;cursor=");
        link.push_str(&escape(&super::urlencode(cursor)));
    }
    link
}

pub fn queue(q: &Queue<'_>, staff: (&str, &str)) -> String {
    let mut body = format!(
        "<form method=\"get\" action=\"/console/\" role=\"search\">\
         <input type=\"hidden\" name=\"status\" value=\"{}\">\
         <label for=\"q\">Search: phone number, user, request or verification id, or words \
         of the message</label> <input id=\"q\" name=\"q\" type=\"search\" value=\"{}\" \
         maxlength=\"200\"> <button id=\"search\">Search</button></form>",
        escape(q.status),
        escape(q.search)
    );
    if let Some(problem) = q.problem {
        let _ = write!(
            body,
            "<p class=\"error\" id=\"error\">{}</p>",
            escape(problem)
        );
    }
    if q.admin {
        body.push_str("<p><a id=\"audit-link\" href=\"/console/audit\">Audit log</a></p>");
    }
    body.push_str("<nav aria-label=\"Status\">");
    let count = |status: Option<RequestStatus>| -> i64 {
        q.counts
            .iter()
            .filter(|(s, _)| status.is_none_or(|wanted| *s == wanted))
            .map(|(_, n)| n)
            .sum()
    };
    for (name, status) in [
        ("open", Some(RequestStatus::Open)),
        ("approved", Some(RequestStatus::Approved)),
        ("rejected", Some(RequestStatus::Rejected)),
        ("all", None),
    ] {
        let current = if name == q.status {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(
            body,
            "<a id=\"tab-{name}\" href=\"{}\"{current}>{name} (<span class=\"count\">{}</span>)</a>",
            queue_link(name, q.search, None),
            count(status)
        );
    }
    body.push_str("</nav>");
    if q.requests.is_empty() {
        body.push_str("<p id=\"empty\">No requests.</p>");
    } else {
        body.push_str(
            "<div class=\"scroll\"><table id=\"queue\"><thead><tr><th>Received</th><th>Caller</th><th>User</th>\
             <th>Verification</th><th>Length</th><th>Status</th><th></th></tr></thead><tbody>",
        );
        for r in q.requests {
            let user = r
                .verification
                .as_ref()
                .and_then(|v| v.user_ref.as_deref())
                .unwrap_or("—");
            let verification = r.verification.as_ref().map_or_else(
                || r.caller_match.to_owned(),
                |v| format!("{} ({})", v.id, v.status.as_deref().unwrap_or("?")),
            );
            let overdue = if r.overdue {
                " <span class=\"overdue\">overdue</span>"
            } else {
                ""
            };
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1} s</td><td>{}{overdue}</td>\
                 <td><a class=\"open\" href=\"/console/requests/{}\">Open</a></td></tr>",
                q.times.show(r.received_ms),
                escape(r.caller.as_deref().unwrap_or("withheld")),
                escape(user),
                escape(&verification),
                r.duration_ms as f64 / 1000.0,
                r.status,
                escape(&r.id),
            );
        }
        body.push_str("</tbody></table></div>");
    }
    body.push_str("<nav aria-label=\"Pages\">");
    if q.first_page {
        let _ = write!(
            body,
            "<a id=\"first-page\" href=\"{}\">First page</a>",
            queue_link(q.status, q.search, None)
        );
    }
    if let Some(next) = &q.next {
        let _ = write!(
            body,
            "<a id=\"next-page\" rel=\"next\" href=\"{}\">Next page</a>",
            queue_link(q.status, q.search, Some(next))
        );
    }
    body.push_str("</nav>");
    page("Manual verification requests", Some(staff), &body)
}

/// The request's past: calls, code checks, lockout, other requests from the number.
fn history(h: &RequestHistory, times: &Times) -> String {
    let mut out = String::from("<h2>History</h2>");
    if h.calls.is_empty() {
        out.push_str("<p id=\"no-calls\">No call reached this verification.</p>");
    } else {
        out.push_str(
            "<table id=\"calls\"><caption>Calls</caption><thead><tr><th>Started</th>\
             <th>Ended</th><th>Outcome</th></tr></thead><tbody>",
        );
        for c in &h.calls {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                times.show(c.started_at),
                c.ended_at
                    .map_or_else(|| "in progress".to_owned(), |at| times.show(at)),
                c.outcome.map_or("—", CallOutcome::as_str)
            );
        }
        out.push_str("</tbody></table>");
    }
    if !h.checks.checks.is_empty() {
        out.push_str(
            "<table id=\"checks\"><caption>Codes checked (never the digits)</caption><thead>\
             <tr><th>When</th><th>How</th><th>Result</th></tr></thead><tbody>",
        );
        for c in &h.checks.checks {
            let how = match c.method {
                EntryMethod::Keypad => "keyed",
                EntryMethod::Speech => "spoken",
                EntryMethod::WebPage => "web page",
            };
            let result = if c.right { "right" } else { "wrong" };
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{how}</td><td>{result}</td></tr>",
                times.show(c.at)
            );
        }
        out.push_str("</tbody></table>");
    }
    if let Some(until) = h.checks.locked_until {
        let _ = write!(
            out,
            "<p id=\"lockout\">The number and the user were locked out until {} (by this \
             verification).</p>",
            times.show(until)
        );
    }
    if !h.others.is_empty() {
        out.push_str("<h3>Other requests from this number</h3><ul id=\"others\">");
        for o in &h.others {
            let _ = write!(
                out,
                "<li><a href=\"/console/requests/{}\">{}</a> — {} — {}</li>",
                escape(&o.id),
                escape(&o.id),
                times.show(o.created_at),
                o.status
            );
        }
        out.push_str("</ul>");
    }
    out
}

pub fn request(r: &RequestView, h: &RequestHistory, times: &Times, staff: (&str, &str)) -> String {
    let csrf = escape(staff.1);
    let id = escape(&r.id);
    let mut body = format!(
        "<p><a href=\"/console/\">← Queue</a></p><dl>\
         <dt>Received</dt><dd>{}</dd><dt>Caller</dt><dd id=\"caller\">{}</dd>\
         <dt>Caller ID</dt><dd id=\"caller-id\">{}{}</dd>\
         <dt>Status</dt><dd id=\"status\">{}{}</dd>",
        times.show(r.received_ms),
        escape(r.caller.as_deref().unwrap_or("withheld")),
        r.caller_match,
        // A match is a hint: anyone can send any caller ID, the number under verification's
        // too. What the caller says is the evidence.
        if r.caller_match == CallerMatch::Matched.as_str() {
            " (caller IDs can be faked: check what the caller says)"
        } else {
            ""
        },
        r.status,
        if r.overdue {
            " <span class=\"overdue\">overdue: over 24 hours</span>"
        } else {
            ""
        },
    );
    if let Some(v) = &r.verification {
        let _ = write!(
            body,
            "<dt>Verification</dt><dd id=\"verification\">{} — user {} — {}</dd>",
            escape(&v.id),
            escape(v.user_ref.as_deref().unwrap_or("?")),
            escape(v.status.as_deref().unwrap_or("?"))
        );
    }
    if let Some(reason) = &r.reason {
        let _ = write!(body, "<dt>Reason</dt><dd>{}</dd>", escape(reason));
    }
    if let (Some(at), Some(by)) = (r.decided_ms, &r.decided_by) {
        let _ = write!(
            body,
            "<dt>Decided</dt><dd>{} by {}</dd>",
            times.show(at),
            escape(by)
        );
    }
    let _ = write!(
        body,
        "<dt>Message</dt><dd>{:.1} s, ended by {}</dd></dl>",
        r.duration_ms as f64 / 1000.0,
        escape(&r.ended_by)
    );
    if r.recording_url.is_some() {
        let _ = write!(
            body,
            "<audio id=\"recording\" controls preload=\"none\" \
             src=\"/console/requests/{id}/recording.wav\"></audio>"
        );
    } else {
        body.push_str("<p>The recording was deleted after the retention period.</p>");
    }
    if let Some(transcript) = &r.transcript {
        let _ = write!(
            body,
            "<h2>Transcript</h2><p id=\"transcript\">{}</p>",
            escape(transcript)
        );
    }
    body.push_str(&history(h, times));
    if r.status.as_str() == "open" {
        let pick = if r.verification.is_none() {
            "<label>Verification id (the request matched none) \
             <input name=\"verification_id\" id=\"verification-id\" required></label>"
        } else {
            ""
        };
        let _ = write!(
            body,
            "<h2>Decide</h2><form method=\"post\" action=\"/console/requests/{id}/approve\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">{pick}\
             <button id=\"approve\">Approve: mark the number verified</button></form>\
             <form method=\"post\" action=\"/console/requests/{id}/reject\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <label>Reason <input name=\"reason\" id=\"reason\" maxlength=\"500\" required></label>\
             <button id=\"reject\">Reject</button></form>"
        );
    }
    page("Request", Some(staff), &body)
}

/// The second step of a decision: what it will do, and a button that does it (the form's
/// fields again, with `confirm=yes`), or back to the request.
pub fn confirm(r: &RequestView, decision: &Confirming<'_>, staff: (&str, &str)) -> String {
    let id = escape(&r.id);
    let csrf = escape(staff.1);
    let (what, action, fields, button) = match decision {
        Confirming::Approve { verification_id } => {
            let target = verification_id
                .map(str::to_owned)
                .or_else(|| r.verification.as_ref().map(|v| v.id.clone()))
                .unwrap_or_default();
            let user = r
                .verification
                .as_ref()
                .and_then(|v| v.user_ref.as_deref())
                .unwrap_or("?");
            (
                format!(
                    "Approve request {id}: verification {} (user {}) becomes verified, and the \
                     web app is told so. This cannot be undone.",
                    escape(&target),
                    escape(user)
                ),
                "approve",
                verification_id.map_or_else(String::new, |v| {
                    format!(
                        "<input type=\"hidden\" name=\"verification_id\" value=\"{}\">",
                        escape(v)
                    )
                }),
                "Yes, approve",
            )
        }
        Confirming::Reject { reason } => (
            format!(
                "Reject request {id} with the reason “{}”. The number stays unverified. This \
                 cannot be undone.",
                escape(reason)
            ),
            "reject",
            format!(
                "<input type=\"hidden\" name=\"reason\" value=\"{}\">",
                escape(reason)
            ),
            "Yes, reject",
        ),
    };
    page(
        "Confirm the decision",
        Some(staff),
        &format!(
            "<p id=\"confirm-text\">{what}</p>\
             <form method=\"post\" action=\"/console/requests/{id}/{action}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">{fields}\
             <button id=\"confirm\" name=\"confirm\" value=\"yes\">{button}</button> \
             <a id=\"cancel\" href=\"/console/requests/{id}\">Cancel</a></form>"
        ),
    )
}

/// A decision waiting for its confirmation.
pub enum Confirming<'a> {
    Approve { verification_id: Option<&'a str> },
    Reject { reason: &'a str },
}

/// The audit log page: the filter form, the entries, the next page.
pub struct AuditPage<'a> {
    pub entries: &'a [AuditEntry],
    pub actor: &'a str,
    pub action: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub problem: Option<&'a str>,
    /// The id the next (older) page starts before.
    pub next: Option<i64>,
    pub times: &'a Times,
}

pub fn audit(a: &AuditPage<'_>, staff: (&str, &str)) -> String {
    let mut body = format!(
        "<p><a href=\"/console/\">← Queue</a></p>\
         <form method=\"get\" action=\"/console/audit\" id=\"audit-filter\">\
         <label>Who <input id=\"actor\" name=\"actor\" value=\"{}\" \
         placeholder=\"staff:alice\"></label>\
         <label>Action <input id=\"action\" name=\"action\" value=\"{}\" \
         placeholder=\"approve\"></label>\
         <label>From (day) <input id=\"from\" name=\"from\" type=\"date\" value=\"{}\"></label>\
         <label>To (day) <input id=\"to\" name=\"to\" type=\"date\" value=\"{}\"></label>\
         <button id=\"filter\">Show</button> \
         <button id=\"export\" formaction=\"/console/audit/decisions.csv\">Export the \
         decisions of these days (CSV)</button></form>",
        escape(a.actor),
        escape(a.action),
        escape(a.from),
        escape(a.to)
    );
    if let Some(problem) = a.problem {
        let _ = write!(
            body,
            "<p class=\"error\" id=\"error\">{}</p>",
            escape(problem)
        );
    }
    if a.entries.is_empty() {
        body.push_str("<p id=\"empty\">No entries.</p>");
    } else {
        body.push_str(
            "<div class=\"scroll\"><table id=\"audit\"><thead><tr><th>When</th><th>Who</th><th>Action</th>\
             <th>Subject</th><th>Detail</th></tr></thead><tbody>",
        );
        for e in a.entries {
            let subject = if e.subject.starts_with("mr_") {
                format!(
                    "<a href=\"/console/requests/{0}\">{0}</a>",
                    escape(&e.subject)
                )
            } else {
                escape(&e.subject)
            };
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{subject}</td><td>{}</td></tr>",
                a.times.show(e.at),
                escape(&e.actor),
                escape(&e.action),
                escape(&e.detail)
            );
        }
        body.push_str("</tbody></table></div>");
    }
    if let Some(next) = a.next {
        let mut link = format!("/console/audit?before={next}");
        for (key, value) in [
            ("actor", a.actor),
            ("action", a.action),
            ("from", a.from),
            ("to", a.to),
        ] {
            if !value.is_empty() {
                let _ = write!(link, "&amp;{key}={}", escape(&super::urlencode(value)));
            }
        }
        let _ = write!(
            body,
            "<nav aria-label=\"Pages\"><a id=\"next-page\" rel=\"next\" href=\"{link}\">\
             Older entries</a></nav>"
        );
    }
    page("Audit log", Some(staff), &body)
}

/// One CSV field, always quoted: a spreadsheet whose list separator is not the comma (`;`
/// in many locales) would otherwise split an unquoted field and read what follows a `;` as
/// a cell of its own. A field a spreadsheet would take for a formula (`=`, `+`, `-`, `@`)
/// is prefixed with `'`.
fn csv_field(text: &str) -> String {
    let guard = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        "'"
    } else {
        ""
    };
    format!("\"{guard}{}\"", text.replace('"', "\"\""))
}

/// Decisions as CSV: one row each, oldest first (fields: [`csv_field`]).
pub fn decisions_csv(decisions: &[AuditEntry], times: &Times) -> String {
    let mut out = String::from("at_utc,at_local,staff,decision,request,detail\r\n");
    for d in decisions {
        let local = jiff::Timestamp::from_millisecond(d.at)
            .map(|t| {
                t.to_zoned_datetime(times.zone.clone())
                    .strftime("%Y-%m-%d %H:%M:%S %Z")
                    .to_string()
            })
            .unwrap_or_default();
        let _ = write!(
            out,
            "{},{},{},{},{},{}\r\n",
            rfc3339(d.at),
            csv_field(&local),
            csv_field(&d.actor),
            csv_field(&d.action),
            csv_field(&d.subject),
            csv_field(&d.detail)
        );
    }
    out
}

pub fn message(title: &str, text: &str, staff: Option<(&str, &str)>) -> String {
    page(
        title,
        staff,
        &format!(
            "<p id=\"message\">{}</p><p><a href=\"/console/\">Back to the queue</a></p>",
            escape(text)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape(r#"<script>alert("x&'y")</script>"#),
            "&lt;script&gt;alert(&quot;x&amp;&#39;y&quot;)&lt;/script&gt;"
        );
    }

    #[test]
    fn csv_fields_are_quoted_and_never_formulas() {
        assert_eq!(csv_field("verified vf_1"), "\"verified vf_1\"");
        // Split at the `;` by a spreadsheet of a semicolon locale, were it not quoted.
        assert_eq!(csv_field("x;=1+1"), "\"x;=1+1\"");
        assert_eq!(csv_field("=cmd|' /C calc'!A0"), "\"'=cmd|' /C calc'!A0\"");
        assert_eq!(csv_field("-2"), "\"'-2\"");
        assert_eq!(
            csv_field("say \"hi\", then\nbye"),
            "\"say \"\"hi\"\", then\nbye\""
        );
    }
}
