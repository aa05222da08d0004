//! `probe answer`: the UAS. Waits for an INVITE, rings, answers with an SDP answer,
//! retransmits the 200 until the ACK (RFC 3261 §13.3.1.4), then runs the session.

use std::time::Duration;

use anyhow::Context as _;
use rsip::headers::UntypedHeader;
use rsip::prelude::HeadersExt;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::report::Report;
use super::sip::message::{new_tag, record_routes, response, tag_of};
use super::sip::{Dialog, Endpoint, Inbound};
use super::{finish_media, local_ip_towards, sdp, session, Prepared, UsageError};

pub async fn answer(args: &super::AnswerArgs, prepared: &Prepared) -> anyhow::Result<Report> {
    let mut endpoint = Endpoint::bind(args.listen, args.listen.ip())
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
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
                report.fail(
                    "no_call",
                    format!(
                        "no INVITE arrived on {} within {} s",
                        args.listen,
                        wait.as_secs_f64()
                    ),
                );
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
    if let Some(canceled) = ring_for(&mut endpoint, ring, &reply).await {
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
    // Media starts with the 200: the caller may send RTP before its ACK arrives.
    let answered = Instant::now();
    let media = prepared
        .start_media(rtp_socket, negotiated, answered)
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

/// Rings for `ring`; a CANCEL meanwhile is answered 200 and gives the INVITE's 487.
async fn ring_for(
    endpoint: &mut Endpoint,
    ring: Duration,
    reply: &impl Fn(u16, Option<String>) -> rsip::Response,
) -> Option<rsip::Response> {
    let deadline = Instant::now() + ring;
    while let Some(inbound) = endpoint.next(deadline).await {
        match inbound {
            Inbound::Request(r, from) if r.method == rsip::Method::Cancel => {
                let _ = endpoint
                    .send(response(&r, 200, "", endpoint.local, None), from)
                    .await;
                return Some(reply(487, None));
            }
            Inbound::Request(r, from) if r.method == rsip::Method::Invite => {
                let _ = endpoint.send(reply(180, None), from).await; // a retransmission
            }
            _ => {}
        }
    }
    None
}

/// Sends a final response to the INVITE until the ACK comes (T1 doubling up to T2, for at
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
                Inbound::Request(r, _) if r.method == rsip::Method::Ack => return true,
                // A retransmitted INVITE is answered by the next retransmission.
                Inbound::Request(r, _) if r.method == rsip::Method::Invite => {}
                other => endpoint.defer(other),
            }
        }
        interval = (interval * 2).min(timers.t2);
    }
    false
}
