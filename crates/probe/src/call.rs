//! `probe call`: the UAC. INVITE with an SDP offer, digest authentication, provisional
//! responses, CANCEL on ring timeout, ACK, then the session.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::report::Report;
use super::sip::message::{derived_from_invite, new_tag, record_routes, to_tag};
use super::sip::{digest, transaction, Dialog, Endpoint, TransactionError};
use super::{local_ip_towards, sdp, session, Prepared, UsageError};

/// Challenges answered before the probe gives up: a proxy's and the PBX's, and a few more
/// for stale nonces.
const MAX_AUTH_ROUNDS: u32 = 4;

/// Places one call; the report says how it went (usage and local errors are errors).
pub async fn call(
    args: &super::CallArgs,
    prepared: &Prepared,
    record: Option<&Path>,
) -> anyhow::Result<Report> {
    let target = rsip::Uri::try_from(args.target.as_str()).map_err(|e| {
        UsageError(format!(
            "{:?} is not a SIP URI like sip:600@pbx.example.com: {e}",
            args.target
        ))
    })?;
    let host = target.host_with_port.host.to_string();
    let port = target.host_with_port.port.map(u16::from).unwrap_or(5060);
    let mut report = Report {
        role: "uac",
        peer: args.target.clone(),
        ..Default::default()
    };
    let remote = match tokio::net::lookup_host((host.as_str(), port))
        .await
        .map(|mut a| a.next())
    {
        Ok(Some(addr)) => addr,
        Ok(None) | Err(_) => {
            report.fail("unreachable", format!("cannot resolve {host}"));
            return Ok(report);
        }
    };
    let local_ip = local_ip_towards(remote).with_context(|| format!("no route to {remote}"))?;
    let mut endpoint = Endpoint::bind_to_peer(SocketAddr::new(local_ip, 0), local_ip, remote.ip())
        .await
        .context("binding the SIP socket")?;
    let rtp_socket = UdpSocket::bind(SocketAddr::new(local_ip, 0))
        .await
        .context("binding the RTP socket")?;
    let local_rtp = rtp_socket.local_addr()?;
    let session_id = rand::random::<u32>() as u64;
    let mut dialog = Dialog {
        call_id: format!("{:016x}@callverify-probe", rand::random::<u64>()),
        // Asterisk (PJSIP identify_by=username) finds the endpoint by the From user.
        local_uri: format!(
            "<sip:{}@{local_ip}>",
            args.user.as_deref().unwrap_or("probe")
        ),
        local_tag: new_tag(),
        remote_uri: format!("<{}>", args.target),
        remote_tag: None,
        remote_target: target,
        remote_addr: remote,
        local_addr: endpoint.local,
        local_cseq: 0,
        route_set: Vec::new(),
    };
    report.call_id = Some(dialog.call_id.clone());
    let offer = sdp::offer(local_rtp, &prepared.codecs, session_id);
    let timers = prepared.session.timers;
    let ring_timeout = Duration::try_from_secs_f64(args.ring_timeout).map_err(|_| {
        UsageError(format!(
            "--ring-timeout must be seconds, not {}",
            args.ring_timeout
        ))
    })?;

    let started = Instant::now();
    let mut credentials: Vec<digest::Answer> = Vec::new();
    let mut invite = dialog.request(rsip::Method::Invite, None, Some(offer.clone()));
    let response = loop {
        let mut pdd = report.sip.post_dial_delay_ms;
        let mut provisional = false;
        let transaction =
            transaction::run(&mut endpoint, &invite, remote, timers, ring_timeout, |r| {
                provisional = true;
                if r.status_code.code() > 100 && pdd.is_none() {
                    pdd = Some(started.elapsed().as_millis() as u64);
                }
            });
        let outcome = tokio::select! {
            outcome = transaction => outcome,
            _ = tokio::signal::ctrl_c() => {
                let crossed = cancel(&mut endpoint, &invite, remote, timers, provisional).await;
                let crossed = hang_up_crossed(&mut endpoint, &mut dialog, crossed, timers).await;
                report.fail("interrupted", format!("interrupted before the answer; the call was canceled{crossed}"));
                return Ok(report);
            }
        };
        report.sip.post_dial_delay_ms = pdd;
        let response = match outcome {
            Ok(response) => response,
            Err(TransactionError::RingTimeout { waited }) => {
                let crossed = cancel(&mut endpoint, &invite, remote, timers, true).await;
                let crossed = hang_up_crossed(&mut endpoint, &mut dialog, crossed, timers).await;
                report.fail(
                    "no_answer",
                    format!(
                        "no answer after ringing {:.1} s; canceled{crossed}",
                        waited.as_secs_f64()
                    ),
                );
                return Ok(report);
            }
            Err(e @ TransactionError::Malformed { .. }) => {
                report.fail("malformed_sip", e.to_string());
                return Ok(report);
            }
            Err(e) => {
                report.fail("timeout", e.to_string());
                return Ok(report);
            }
        };
        let code = response.status_code.code();
        if code == 401 || code == 407 {
            report.sip.auth_challenges += 1;
            let kept = digest::authorize(
                &response,
                &invite,
                args.user.as_deref(),
                args.password.as_deref(),
            )
            .map_err(|e| e.to_string())
            .and_then(|answers| {
                keep_credentials(&mut credentials, answers, report.sip.auth_challenges)
            });
            if let Err(message) = kept {
                record_final(&mut report, &response);
                report.fail("forbidden", message);
                return Ok(report);
            }
            invite = dialog.request(rsip::Method::Invite, None, Some(offer.clone()));
            for credential in &credentials {
                invite.headers.push(credential.header.clone());
            }
            continue;
        }
        break response;
    };
    record_final(&mut report, &response);
    let code = response.status_code.code();
    if code >= 300 {
        let (kind, what) = refusal(code);
        report.fail(kind, format!("{what}: {}", response.status_code));
        return Ok(report);
    }
    let answered = Instant::now();
    report.sip.answer_ms = Some(answered.duration_since(started).as_millis() as u64);
    dialog.learn_remote(&response, to_tag(&response));
    dialog.route_set = record_routes(&response).into_iter().rev().collect();
    let invite_cseq = dialog.local_cseq;
    let ack = dialog.request(rsip::Method::Ack, Some(invite_cseq), None);
    endpoint.send(&ack, remote).await.context("sending ACK")?;

    let negotiated = match sdp::parse(&String::from_utf8_lossy(&response.body))
        .and_then(|d| d.negotiate(&prepared.codecs))
    {
        Ok(n) => n,
        Err(e) => {
            report.fail(
                "codec_mismatch",
                format!("the peer answered with {e}; hanging up"),
            );
            let bye = dialog.request(rsip::Method::Bye, None, None);
            let _ =
                transaction::run(&mut endpoint, &bye, remote, timers, timers.timeout, |_| {}).await;
            return Ok(report);
        }
    };
    report.codec = Some(negotiated.codec);
    report.audio_payload_type = Some(negotiated.audio_pt);
    report.event_payload_type = negotiated.event_pt;
    report.ok = true;
    let media = prepared
        .start_media(rtp_socket, negotiated, answered, true, remote.ip())
        .map_err(|e| UsageError(e.to_string()))?;
    let local = session::LocalMedia::new(local_rtp, &negotiated, session_id);
    let call =
        session::Established::new(&mut endpoint, &mut dialog, media, local, answered).with_ack(ack);
    session::run(call, &prepared.session, &mut report, record).await?;
    Ok(report)
}

/// Adds the answers to a challenge to the credentials kept for the call (one per realm, for
/// the proxy and for the PBX apart), all of which go on the next INVITE. A realm that
/// challenges the answer again, unless for a stale nonce, means the password is wrong.
fn keep_credentials(
    kept: &mut Vec<digest::Answer>,
    answers: Vec<digest::Answer>,
    round: u32,
) -> Result<(), String> {
    if round > MAX_AUTH_ROUNDS {
        return Err(format!(
            "the peer challenged {round} times; giving up on authentication"
        ));
    }
    for answer in answers {
        let same = |k: &&mut digest::Answer| {
            k.realm == answer.realm
                && std::mem::discriminant(&k.header) == std::mem::discriminant(&answer.header)
        };
        match kept.iter_mut().find(same) {
            Some(_) if !answer.stale => {
                return Err(format!(
                    "wrong credentials: realm {:?} refused the answer for user and password \
                     and challenged again (check --user and --password)",
                    answer.realm
                ))
            }
            Some(known) => *known = answer,
            None => kept.push(answer),
        }
    }
    Ok(())
}

fn record_final(report: &mut Report, response: &rsip::Response) {
    report.sip.final_code = Some(response.status_code.code());
    let status = response.status_code.to_string();
    let reason = status
        .split_once(' ')
        .map_or(status.as_str(), |(_, r)| r)
        .to_string();
    report.sip.final_reason = Some(reason);
}

/// The report's failure kind and wording for a final response code.
fn refusal(code: u16) -> (&'static str, &'static str) {
    match code {
        401 | 403 | 407 => (
            "forbidden",
            "the peer refused the call (authentication or permission)",
        ),
        486 | 600 => ("busy", "the callee is busy"),
        503 => ("unavailable", "the peer is unavailable"),
        488 | 606 => (
            "codec_mismatch",
            "the peer accepts none of the offered codecs",
        ),
        408 | 480 | 487 => ("no_answer", "no answer"),
        _ => ("rejected", "the peer rejected the call"),
    }
}

/// CANCELs a pending INVITE (RFC 3261 §9.1) and sees the INVITE to its final response. A
/// non-2xx (the 487) is ACKed here; a 2xx that crossed the CANCEL is returned for the caller
/// to ACK and hang up. Before any provisional response no CANCEL may be sent: it waits for
/// one (or for the final response, which makes the CANCEL moot).
async fn cancel(
    endpoint: &mut Endpoint,
    invite: &rsip::Request,
    remote: SocketAddr,
    timers: transaction::Timers,
    provisional: bool,
) -> Option<rsip::Response> {
    let deadline = Instant::now() + timers.timeout;
    if !provisional {
        match invite_response(endpoint, invite, remote, deadline).await {
            Some(r) if r.status_code.code() < 200 => {}
            ended => return ended,
        }
    }
    let cancel = derived_from_invite(invite, rsip::Method::Cancel, None);
    if let Err(e) =
        transaction::run(endpoint, &cancel, remote, timers, timers.timeout, |_| {}).await
    {
        tracing::warn!("CANCEL: {e}");
    }
    loop {
        match invite_response(endpoint, invite, remote, deadline).await {
            Some(r) if r.status_code.code() < 200 => continue,
            ended => return ended,
        }
    }
}

/// The next response to the INVITE (same branch and CSeq method): a provisional or 2xx one
/// is returned; a non-2xx final one is ACKed and ends the wait (None), as does the deadline.
/// Responses the CANCEL's transaction set aside come first.
async fn invite_response(
    endpoint: &mut Endpoint,
    invite: &rsip::Request,
    remote: SocketAddr,
    deadline: Instant,
) -> Option<rsip::Response> {
    while let Some(inbound) = endpoint.next(deadline).await {
        let super::sip::Inbound::Response(r, _) = inbound else {
            continue;
        };
        if !transaction::matches(&r, invite) {
            continue;
        }
        if r.status_code.code() >= 300 {
            let to = rsip::prelude::HeadersExt::to_header(&r).ok();
            let ack = derived_from_invite(invite, rsip::Method::Ack, to);
            let _ = endpoint.send(ack, remote).await;
            return None;
        }
        return Some(r);
    }
    None
}

/// A 2xx that crossed our CANCEL: the call is up after all, so it is acknowledged and hung
/// up at once. Returns what the report adds to its message.
async fn hang_up_crossed(
    endpoint: &mut Endpoint,
    dialog: &mut Dialog,
    answered: Option<rsip::Response>,
    timers: transaction::Timers,
) -> &'static str {
    let Some(response) = answered else {
        return "";
    };
    dialog.learn_remote(&response, to_tag(&response));
    dialog.route_set = record_routes(&response).into_iter().rev().collect();
    let ack = dialog.request(rsip::Method::Ack, Some(dialog.local_cseq), None);
    if let Err(e) = endpoint.send(&ack, dialog.remote_addr).await {
        tracing::warn!("ACK: {e}");
    }
    let bye = dialog.request(rsip::Method::Bye, None, None);
    let to = dialog.remote_addr;
    if let Err(e) = transaction::run(endpoint, &bye, to, timers, timers.timeout, |_| {}).await {
        tracing::warn!("BYE: {e}");
    }
    " (the peer answered as the CANCEL crossed: acknowledged and hung up)"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use crate::sip::message::{cseq, response, tag_of};
    use rsip::headers::UntypedHeader;
    use rsip::prelude::HeadersExt;

    /// `probe call TARGET ARGS` as the command line gives them, and what they prepare.
    fn call_args(target: &str, args: &[&str]) -> (crate::CallArgs, Prepared) {
        let crate::ProbeCommand::Call(args) =
            crate::command_line(&[&["call", target], args].concat())
        else {
            unreachable!("parsed a call")
        };
        let prepared = args
            .common
            .prepare(Duration::from_secs_f64(args.timeout))
            .unwrap();
        (args, prepared)
    }

    /// The next SIP message `socket` receives within `ms`, if any.
    async fn received(socket: &UdpSocket, ms: u64) -> Option<rsip::SipMessage> {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_millis(ms), socket.recv(&mut buf))
            .await
            .ok()?
            .unwrap();
        Some(rsip::SipMessage::try_from(&buf[..n]).unwrap())
    }

    /// The code and CSeq method of a response, the method of a request.
    fn summary(message: Option<rsip::SipMessage>) -> Option<String> {
        Some(match message? {
            rsip::SipMessage::Response(r) => format!("{} {}", r.status_code.code(), cseq(&r)?.1),
            rsip::SipMessage::Request(r) => r.method.to_string(),
        })
    }

    /// The called party, on `callee`: takes the probe's INVITE, answers 200 with its RTP at
    /// `rtp`, waits for the ACK; returns the INVITE and the callee's side of the dialog.
    async fn answer_the_probe(callee: &UdpSocket, rtp: SocketAddr) -> (rsip::Request, Dialog) {
        let mut buf = [0u8; 4096];
        let (n, probe) = tokio::time::timeout(Duration::from_secs(5), callee.recv_from(&mut buf))
            .await
            .expect("an INVITE within 5 s")
            .unwrap();
        let Ok(rsip::SipMessage::Request(invite)) = rsip::SipMessage::try_from(&buf[..n]) else {
            panic!("not a request: {:?}", String::from_utf8_lossy(&buf[..n]));
        };
        let from = invite.from_header().unwrap().value().to_string();
        let mut dialog = Dialog {
            call_id: invite.call_id_header().unwrap().value().to_string(),
            local_uri: invite.to_header().unwrap().value().to_string(),
            local_tag: "callee".into(),
            remote_uri: from.split(";tag=").next().unwrap().to_string(),
            remote_tag: None,
            remote_target: invite.uri.clone(),
            remote_addr: probe,
            local_addr: callee.local_addr().unwrap(),
            local_cseq: 100,
            route_set: Vec::new(),
        };
        dialog.learn_remote(&invite, tag_of(&from));
        let sdp = sdp::offer(rtp, &[Codec::Pcmu], 1);
        let ok = response(&invite, 200, "callee", dialog.local_addr, Some(sdp));
        callee
            .send_to(ok.to_string().as_bytes(), probe)
            .await
            .unwrap();
        assert_eq!(
            summary(received(callee, 2000).await).as_deref(),
            Some("ACK")
        );
        (invite, dialog)
    }

    /// Once the call is up, SIP from any host but the one called is dropped unanswered, even
    /// with the dialog's Call-ID and both tags. From the called host, a BYE without both tags
    /// gets 481 and a 200 with another To tag no ACK; the dialog's own BYE ends the call.
    #[tokio::test]
    async fn only_the_called_host_and_the_dialogs_tags_reach_the_call() {
        let callee = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let callee_rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Another host: Linux routes all of 127/8 to loopback.
        let stranger = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        let target = format!("sip:100@{}", callee.local_addr().unwrap());
        let flags = ["--rtp-timeout", "0", "--linger", "20", "--timeout", "5"];
        let (args, prepared) = call_args(&target, &flags);
        let calling = tokio::spawn(async move { call(&args, &prepared, None).await });
        let (invite, mut dialog) =
            answer_the_probe(&callee, callee_rtp.local_addr().unwrap()).await;
        let probe = dialog.remote_addr;

        let bye = dialog.request(rsip::Method::Bye, None, None);
        stranger
            .send_to(bye.to_string().as_bytes(), probe)
            .await
            .unwrap();
        assert_eq!(
            summary(received(&stranger, 300).await),
            None,
            "answered a stranger"
        );

        let mut guessed_to = dialog.clone();
        guessed_to.remote_tag = Some("guessed".into());
        let mut guessed_from = dialog.clone();
        guessed_from.local_tag = "guessed".into();
        for mut forger in [guessed_to, guessed_from] {
            let bye = forger.request(rsip::Method::Bye, None, None);
            callee
                .send_to(bye.to_string().as_bytes(), probe)
                .await
                .unwrap();
            let answer = summary(received(&callee, 2000).await);
            assert_eq!(answer.as_deref(), Some("481 BYE"));
        }

        let local = dialog.local_addr;
        let other_ok = response(&invite, 200, "other", local, None);
        callee
            .send_to(other_ok.to_string().as_bytes(), probe)
            .await
            .unwrap();
        let answer = summary(received(&callee, 300).await);
        assert_eq!(answer, None, "acknowledged another dialog's 200");
        let ok = response(&invite, 200, "callee", local, None);
        callee
            .send_to(ok.to_string().as_bytes(), probe)
            .await
            .unwrap();
        let answer = summary(received(&callee, 2000).await);
        assert_eq!(
            answer.as_deref(),
            Some("ACK"),
            "the 200 again, the ACK again"
        );

        let bye = dialog.request(rsip::Method::Bye, None, None);
        callee
            .send_to(bye.to_string().as_bytes(), probe)
            .await
            .unwrap();
        assert_eq!(
            summary(received(&callee, 2000).await).as_deref(),
            Some("200 BYE")
        );
        let report = calling.await.unwrap().unwrap();
        assert!(report.ok, "{:?}", report.error);
        assert_eq!(report.hangup.map(|h| h.by), Some("peer"));
    }

    fn answer(realm: &str, proxy: bool, stale: bool) -> digest::Answer {
        let value = format!("Digest realm=\"{realm}\"");
        digest::Answer {
            realm: realm.into(),
            stale,
            header: if proxy {
                rsip::headers::ProxyAuthorization::new(value).into()
            } else {
                rsip::headers::Authorization::new(value).into()
            },
        }
    }

    #[test]
    fn credentials_are_kept_per_realm_and_a_repeated_challenge_is_wrong_credentials() {
        let mut kept = Vec::new();
        keep_credentials(&mut kept, vec![answer("proxy", true, false)], 1).unwrap();
        keep_credentials(&mut kept, vec![answer("pbx", false, false)], 2).unwrap();
        assert_eq!(
            kept.len(),
            2,
            "the proxy's credentials stay for the PBX's round"
        );
        // A stale nonce is answered again, in place.
        keep_credentials(&mut kept, vec![answer("pbx", false, true)], 3).unwrap();
        assert_eq!(kept.len(), 2);
        let error = keep_credentials(&mut kept, vec![answer("pbx", false, false)], 4).unwrap_err();
        assert!(error.starts_with("wrong credentials"), "{error}");
        let error = keep_credentials(&mut kept, vec![answer("other", false, true)], 5).unwrap_err();
        assert!(error.contains("5 times"), "{error}");
    }
}
