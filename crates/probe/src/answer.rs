//! `probe answer`: the UAS. Waits for an INVITE from an allowed host (others get no
//! answer at all), rings, answers with an SDP answer, retransmits the 200 until the ACK
//! (RFC 3261 §13.3.1.4), then runs the session. The probe sends no RTP before that ACK.

use std::time::Duration;

use anyhow::Context as _;
use rsip::headers::UntypedHeader;
use rsip::prelude::HeadersExt;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::report::Report;
use super::sip::message::{acknowledges, branch, new_tag, record_routes, response, tag_of};
use super::sip::{Dialog, Endpoint, Inbound};
use super::{finish_media, local_ip_towards, sdp, session, Prepared, UsageError};

pub async fn answer(args: &super::AnswerArgs, prepared: &Prepared) -> anyhow::Result<Report> {
    let endpoint = Endpoint::bind_allowing(args.listen, args.listen.ip(), args.allow.clone())
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    if !args.listen.ip().is_loopback() && args.allow.iter().all(|n| n.is_loopback()) {
        tracing::warn!(
            "listening on {}, but only loopback may call (--allow): add --allow with the \
             PBX's address",
            args.listen
        );
    }
    answer_on(endpoint, args, prepared).await
}

/// Waits for the call on `endpoint` (bound, with its allowlist) and answers it.
async fn answer_on(
    mut endpoint: Endpoint,
    args: &super::AnswerArgs,
    prepared: &Prepared,
) -> anyhow::Result<Report> {
    let listening = endpoint.local;
    let mut report = Report {
        role: "uas",
        peer: String::new(),
        ..Default::default()
    };
    let wait = Duration::try_from_secs_f64(args.wait_call)
        .map_err(|_| UsageError("--wait-call must be seconds".into()))?;
    let ring = Duration::try_from_secs_f64(args.answer_after)
        .map_err(|_| UsageError("--answer-after must be seconds".into()))?;
    let timers = prepared.session.timers;

    let deadline = Instant::now() + wait;
    let (invite, from) = loop {
        match endpoint.next(deadline).await {
            None => {
                let refused = endpoint.refused();
                let mut message = format!(
                    "no INVITE arrived on {listening} within {} s",
                    wait.as_secs_f64()
                );
                if refused.datagrams > 0 {
                    let hosts: Vec<String> = refused.hosts.iter().map(|h| h.to_string()).collect();
                    message += &format!(
                        "; dropped {} datagrams from hosts not allowed to call ({}): see --allow",
                        refused.datagrams,
                        hosts.join(", ")
                    );
                }
                report.fail("no_call", message);
                return Ok(report);
            }
            Some(Inbound::Request(r, from)) if r.method == rsip::Method::Invite => break (r, from),
            Some(Inbound::Request(r, from)) if r.method != rsip::Method::Ack => {
                let code = if r.method == rsip::Method::Options {
                    200
                } else {
                    481
                };
                let _ = endpoint
                    .send(response(&r, code, &new_tag(), endpoint.local, None), from)
                    .await;
            }
            Some(_) => {}
        }
    };
    let started = Instant::now();
    report.peer = from.to_string();
    if args.listen.ip().is_unspecified() {
        // Listening on every address: advertise the one the caller is answered from.
        endpoint
            .local
            .set_ip(local_ip_towards(from).context("no route back to the caller")?);
    }
    let from_value = invite
        .from_header()
        .map(|h| h.value().to_string())
        .unwrap_or_default();
    let mut dialog = Dialog {
        call_id: invite
            .call_id_header()
            .map(|h| h.value().to_string())
            .unwrap_or_default(),
        local_uri: invite
            .to_header()
            .map(|h| h.value().to_string())
            .unwrap_or_default(),
        local_tag: new_tag(),
        remote_uri: from_value.split(";tag=").next().unwrap_or("").to_string(),
        remote_tag: None,
        remote_target: invite.uri.clone(),
        remote_addr: from,
        local_addr: endpoint.local,
        local_cseq: rand::random::<u16>() as u32,
        route_set: record_routes(&invite),
    };
    dialog.learn_remote(&invite, tag_of(&from_value));
    report.call_id = Some(dialog.call_id.clone());
    let reply = |code: u16, body: Option<String>| {
        response(&invite, code, &dialog.local_tag, dialog.local_addr, body)
    };
    endpoint.send(reply(100, None), from).await?;

    let offer = String::from_utf8_lossy(&invite.body).to_string();
    let negotiated = match sdp::parse(&offer).and_then(|d| d.negotiate(&prepared.codecs)) {
        Ok(n) => n,
        Err(e) => {
            let refusal = reply(488, None);
            report.sip.final_code = Some(488);
            report.sip.final_reason = Some("Not Acceptable Here".into());
            report.fail("codec_mismatch", format!("refused the call with 488: {e}"));
            retransmit_until_ack(&mut endpoint, &refusal, from, timers).await;
            return Ok(report);
        }
    };
    endpoint.send(reply(180, None), from).await?;
    report.sip.post_dial_delay_ms = Some(started.elapsed().as_millis() as u64);
    let ringing = ring_for(&mut endpoint, &invite, &dialog.local_tag, ring, &reply).await;
    if let Some(canceled) = ringing {
        report.sip.final_code = Some(487);
        report.fail("no_answer", "the caller canceled before the answer");
        retransmit_until_ack(&mut endpoint, &canceled, from, timers).await;
        return Ok(report);
    }

    let rtp_socket = UdpSocket::bind((endpoint.local.ip(), 0))
        .await
        .context("binding the RTP socket")?;
    let local_rtp = rtp_socket.local_addr()?;
    let session_id = rand::random::<u32>() as u64;
    let ok = reply(200, Some(sdp::answer(local_rtp, &negotiated, session_id)));
    report.sip.final_code = Some(200);
    report.sip.final_reason = Some("OK".into());
    report.codec = Some(negotiated.codec);
    report.audio_payload_type = Some(negotiated.audio_pt);
    report.event_payload_type = negotiated.event_pt;
    // The receiver starts with the 200 (the caller may send RTP before its ACK arrives); the
    // sender waits for the ACK. Until then nothing confirms that whoever the INVITE's SDP
    // names wants our RTP: one forged INVITE would have sent 50 packets a second there.
    let answered = Instant::now();
    let media = prepared
        .start_media(rtp_socket, negotiated, answered, false, from.ip())
        .map_err(|e| UsageError(e.to_string()))?;
    if !retransmit_until_ack(&mut endpoint, &ok, from, timers).await {
        report.fail(
            "no_ack",
            format!(
                "no ACK for the 200 within {} s",
                timers.timeout.as_secs_f64()
            ),
        );
        finish_media(media, &mut report, args.common.record.as_deref()).await?;
        return Ok(report);
    }
    media.start_sending();
    report.sip.answer_ms = Some(started.elapsed().as_millis() as u64);
    report.ok = true;
    let local = session::LocalMedia::new(local_rtp, &negotiated, session_id);
    let call = session::Established::new(&mut endpoint, &mut dialog, media, local, answered);
    session::run(
        call,
        &prepared.session,
        &mut report,
        args.common.record.as_deref(),
    )
    .await?;
    Ok(report)
}

/// Rings for `ring`; the INVITE's CANCEL (same Call-ID and branch) meanwhile is answered 200,
/// with the tag of our 180, and gives the INVITE's 487. A retransmitted INVITE gets the 180
/// again, another INVITE 486 (one call at a time), any other request 481.
async fn ring_for(
    endpoint: &mut Endpoint,
    invite: &rsip::Request,
    local_tag: &str,
    ring: Duration,
    reply: &impl Fn(u16, Option<String>) -> rsip::Response,
) -> Option<rsip::Response> {
    let same_transaction = |r: &rsip::Request| {
        let call_id = |m: &rsip::Request| m.call_id_header().ok().map(|c| c.value().to_string());
        call_id(r).is_some() && call_id(r) == call_id(invite) && branch(r) == branch(invite)
    };
    let deadline = Instant::now() + ring;
    while let Some(inbound) = endpoint.next(deadline).await {
        let Inbound::Request(r, from) = inbound else {
            continue;
        };
        let answer = match r.method {
            rsip::Method::Ack => continue,
            rsip::Method::Cancel if same_transaction(&r) => {
                let ok = response(&r, 200, local_tag, endpoint.local, None);
                let _ = endpoint.send(ok, from).await;
                return Some(reply(487, None));
            }
            rsip::Method::Invite if same_transaction(&r) => reply(180, None),
            rsip::Method::Invite => response(&r, 486, &new_tag(), endpoint.local, None),
            _ => response(&r, 481, &new_tag(), endpoint.local, None),
        };
        let _ = endpoint.send(answer, from).await;
    }
    None
}

/// Sends a final response to the INVITE until its ACK comes (T1 doubling up to T2, for at
/// most Timer H); false if it never does.
async fn retransmit_until_ack(
    endpoint: &mut Endpoint,
    final_response: &rsip::Response,
    to: std::net::SocketAddr,
    timers: super::sip::Timers,
) -> bool {
    let started = Instant::now();
    let mut interval = timers.t1;
    while started.elapsed() < timers.timeout {
        if endpoint.send(final_response, to).await.is_err() {
            return false;
        }
        let wake = (Instant::now() + interval).min(started + timers.timeout);
        while let Some(inbound) = endpoint.next_from_network(wake).await {
            match inbound {
                Inbound::Request(r, _) if r.method == rsip::Method::Ack => {
                    if acknowledges(&r, final_response) {
                        return true;
                    }
                    tracing::debug!("ignored an ACK of another call or response");
                }
                // A retransmitted INVITE is answered by the next retransmission.
                Inbound::Request(r, _) if r.method == rsip::Method::Invite => {}
                other => endpoint.defer(other),
            }
        }
        interval = (interval * 2).min(timers.t2);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use crate::sip::message::{cseq, derived_from_invite, to_tag};
    use crate::ProbeCommand;

    /// `probe answer ARGS` as the command line gives them, and what they prepare.
    fn answer_args(args: &[&str]) -> (super::super::AnswerArgs, Prepared) {
        let ProbeCommand::Answer(args) = crate::command_line(&[&["answer"], args].concat()) else {
            unreachable!("parsed an answer")
        };
        let timeout = Duration::from_secs_f64(args.timeout);
        let prepared = args.common.prepare(timeout).unwrap();
        (args, prepared)
    }

    /// A caller's side of a call to `probe` (at `callee`) from `caller`.
    fn caller_dialog(caller: std::net::SocketAddr, callee: std::net::SocketAddr) -> Dialog {
        Dialog {
            call_id: "allow@test".into(),
            local_uri: format!("<sip:pbx@{caller}>"),
            local_tag: new_tag(),
            remote_uri: format!("<sip:probe@{callee}>"),
            remote_tag: None,
            remote_target: rsip::Uri::try_from(format!("sip:probe@{callee}")).unwrap(),
            remote_addr: callee,
            local_addr: caller,
            local_cseq: 0,
            route_set: Vec::new(),
        }
    }

    /// The next SIP response `socket` receives within 2 s.
    async fn next_response(socket: &UdpSocket) -> rsip::Response {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf))
            .await
            .expect("a response within 2 s")
            .unwrap();
        rsip::Response::try_from(String::from_utf8_lossy(&buf[..n]).to_string()).unwrap()
    }

    /// The loopback default and the command line's --allow, which replaces it.
    #[test]
    fn the_listener_and_the_allowlist_default_to_loopback() {
        let (args, _) = answer_args(&[]);
        assert_eq!(args.listen, "127.0.0.1:5060".parse().unwrap());
        let expected: Vec<crate::allow::Network> =
            vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        assert_eq!(args.allow, expected);
        let (args, _) = answer_args(&["--allow", "192.0.2.10", "--allow", "10.0.0.0/8"]);
        let expected: Vec<crate::allow::Network> =
            vec!["192.0.2.10".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
        assert_eq!(args.allow, expected);
    }

    /// An INVITE from a host outside --allow gets nothing back, not even a 100, and the
    /// probe goes on waiting; its failure names the host it kept out.
    #[tokio::test]
    async fn an_invite_from_a_host_not_allowed_gets_no_answer() {
        let (args, prepared) =
            answer_args(&["--allow", "127.0.0.2", "--wait-call", "1", "--timeout", "1"]);
        let ip = "127.0.0.1".parse().unwrap();
        let endpoint =
            Endpoint::bind_allowing("127.0.0.1:0".parse().unwrap(), ip, args.allow.clone())
                .await
                .unwrap();
        let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let sdp = sdp::offer(stranger.local_addr().unwrap(), &[Codec::Pcmu], 1);
        let invite = caller_dialog(stranger.local_addr().unwrap(), endpoint.local).request(
            rsip::Method::Invite,
            None,
            Some(sdp),
        );
        stranger
            .send_to(invite.to_string().as_bytes(), endpoint.local)
            .await
            .unwrap();
        let report = answer_on(endpoint, &args, &prepared).await.unwrap();
        let mut buf = [0u8; 4096];
        assert!(
            stranger.try_recv(&mut buf).is_err(),
            "the stranger got an answer: {}",
            String::from_utf8_lossy(&buf)
        );
        assert_eq!(report.sip.final_code, None);
        let error = report.error.expect("no call");
        assert_eq!(error.kind, "no_call");
        assert!(
            error.message.contains("(127.0.0.1)") && error.message.contains("--allow"),
            "{}",
            error.message
        );
    }

    /// The probe sends no RTP to the address the INVITE's SDP names before the caller's ACK
    /// of the 200, nor on an ACK without the 200's To tag (which a forger never saw); the
    /// real ACK starts it.
    #[tokio::test]
    async fn no_rtp_is_sent_before_the_ack_of_the_200() {
        let (args, prepared) = answer_args(&["--timeout", "5", "--rtp-timeout", "0"]);
        let ip = "127.0.0.1".parse().unwrap();
        let endpoint =
            Endpoint::bind_allowing("127.0.0.1:0".parse().unwrap(), ip, args.allow.clone())
                .await
                .unwrap();
        let caller = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Whoever the SDP names: a third party, if the INVITE was forged.
        let named = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut dialog = caller_dialog(caller.local_addr().unwrap(), endpoint.local);
        let sdp = sdp::offer(named.local_addr().unwrap(), &[Codec::Pcmu], 1);
        let invite = dialog.request(rsip::Method::Invite, None, Some(sdp));
        let callee = endpoint.local;
        let answering = tokio::spawn(async move { answer_on(endpoint, &args, &prepared).await });
        caller
            .send_to(invite.to_string().as_bytes(), callee)
            .await
            .unwrap();
        let ok = loop {
            let response = next_response(&caller).await;
            if response.status_code.code() == 200 {
                break response;
            }
        };
        let rtp_within = |ms| {
            let named = &named;
            async move {
                let mut buf = [0u8; 2048];
                tokio::time::timeout(Duration::from_millis(ms), named.recv(&mut buf))
                    .await
                    .is_ok()
            }
        };
        assert!(!rtp_within(300).await, "RTP before the ACK");
        let mut forger = dialog.clone();
        forger.remote_tag = Some("guessed".into());
        let forged = forger.request(rsip::Method::Ack, Some(1), None);
        caller
            .send_to(forged.to_string().as_bytes(), callee)
            .await
            .unwrap();
        assert!(!rtp_within(300).await, "RTP after an ACK without our tag");
        dialog.remote_tag = to_tag(&ok);
        let ack = dialog.request(rsip::Method::Ack, Some(1), None);
        caller
            .send_to(ack.to_string().as_bytes(), callee)
            .await
            .unwrap();
        assert!(rtp_within(1000).await, "no RTP after the ACK");
        let bye = dialog.request(rsip::Method::Bye, None, None);
        caller
            .send_to(bye.to_string().as_bytes(), callee)
            .await
            .unwrap();
        let report = answering.await.unwrap().unwrap();
        assert!(report.ok, "{:?}", report.error);
        assert_eq!(report.hangup.map(|h| h.by), Some("peer"));
    }

    /// While ringing: another INVITE gets 486, an OPTIONS or a CANCEL of another transaction
    /// 481, and the INVITE's CANCEL 200 with our tag, then the INVITE its 487.
    #[tokio::test]
    async fn ringing_answers_the_cancel_with_our_tag_and_strangers_with_481_or_486() {
        let ip = "127.0.0.1".parse().unwrap();
        let mut endpoint = Endpoint::bind_to_peer("127.0.0.1:0".parse().unwrap(), ip, ip)
            .await
            .unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut caller = Dialog {
            call_id: "ring@test".into(),
            local_uri: "<sip:qa@127.0.0.1>".into(),
            local_tag: new_tag(),
            remote_uri: "<sip:100@127.0.0.1>".into(),
            remote_tag: None,
            remote_target: rsip::Uri::try_from("sip:100@127.0.0.1").unwrap(),
            remote_addr: endpoint.local,
            local_addr: peer.local_addr().unwrap(),
            local_cseq: 0,
            route_set: Vec::new(),
        };
        let invite = caller.request(rsip::Method::Invite, None, None);
        let mut stranger = caller.clone();
        stranger.call_id = "other@test".into();
        let other_invite = stranger.request(rsip::Method::Invite, None, None);
        let options = caller.request(rsip::Method::Options, None, None);
        let another_branch = caller.request(rsip::Method::Invite, Some(1), None);
        let stray_cancel = derived_from_invite(&another_branch, rsip::Method::Cancel, None);
        let cancel = derived_from_invite(&invite, rsip::Method::Cancel, None);
        for request in [&other_invite, &options, &stray_cancel, &cancel] {
            peer.send_to(request.to_string().as_bytes(), endpoint.local)
                .await
                .unwrap();
        }
        let local = endpoint.local;
        let reply = |code, body| response(&invite, code, "ourtag", local, body);
        let ring = Duration::from_secs(5);
        let canceled = ring_for(&mut endpoint, &invite, "ourtag", ring, &reply).await;
        assert_eq!(canceled.map(|r| r.status_code.code()), Some(487));
        let mut answers = Vec::new();
        let mut buf = [0u8; 4096];
        for _ in 0..4 {
            let n = peer.recv(&mut buf).await.unwrap();
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            answers.push(rsip::Response::try_from(text).unwrap());
        }
        let codes: Vec<(u16, String)> = answers
            .iter()
            .map(|r| (r.status_code.code(), cseq(r).unwrap().1))
            .collect();
        let expected = [
            (486, "INVITE"),
            (481, "OPTIONS"),
            (481, "CANCEL"),
            (200, "CANCEL"),
        ];
        let expected: Vec<(u16, String)> =
            expected.iter().map(|(c, m)| (*c, m.to_string())).collect();
        assert_eq!(codes, expected);
        assert_eq!(to_tag(&answers[3]).as_deref(), Some("ourtag"));
    }
}
