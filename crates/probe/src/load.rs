//! Load mode (`probe call --calls N --rate R`): N calls started R per second, side by side,
//! with a progress line and a summary of success and timing percentiles.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;

use super::report::Report;
use super::{call, CallArgs, Prepared, UsageError, EXIT_CALL_FAILED};

#[derive(Debug, Serialize)]
pub struct Summary {
    pub calls: u32,
    pub succeeded: u32,
    pub success_rate: f64,
    /// Failures by kind, e.g. {"busy": 3}.
    pub failures: std::collections::BTreeMap<String, u32>,
    pub post_dial_delay_ms: Option<Percentiles>,
    pub answer_ms: Option<Percentiles>,
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

fn percentiles(mut values: Vec<u64>) -> Option<Percentiles> {
    values.sort_unstable();
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    (!values.is_empty()).then(|| Percentiles {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        max: at(1.0),
    })
}

pub async fn run(args: &CallArgs, mut prepared: Prepared) -> anyhow::Result<ExitCode> {
    prepared.session.progress = false; // one line for all calls instead
    let period = pace_of(args.rate)?;
    let shared = Arc::new((args.clone(), prepared));
    let mut pace = tokio::time::interval(period);
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    let mut calls = JoinSet::new();
    let mut reports: Vec<Report> = Vec::new();
    let mut started = 0u32;
    let tty = std::io::stderr().is_terminal();
    while reports.len() < args.calls as usize {
        tokio::select! {
            _ = pace.tick(), if started < args.calls => {
                started += 1;
                let shared = shared.clone();
                let record = args.common.record.as_ref().map(|p| p.with_extension(format!("{started}.wav")));
                calls.spawn(async move {
                    let (args, prepared) = &*shared;
                    call::call(args, prepared, record.as_deref()).await
                });
            }
            Some(done) = calls.join_next() => reports.push(settle(done, &args.target)?),
            _ = progress.tick() => {
                let ok = reports.iter().filter(|r| r.ok).count();
                let line = format!("calls: {started}/{} started, {} done, {ok} ok", args.calls, reports.len());
                if tty { eprint!("\r{line}   ") } else { eprintln!("{line}") }
            }
        }
    }
    if tty {
        eprintln!();
    }
    let summary = summarize(&reports);
    if args.common.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).expect("summaries serialize")
        );
    } else {
        println!(
            "{} calls, {} succeeded ({:.1}%)",
            summary.calls,
            summary.succeeded,
            summary.success_rate * 100.0
        );
        for (kind, n) in &summary.failures {
            println!("  failed: {kind} × {n}");
        }
        for (name, p) in [
            ("post-dial delay", &summary.post_dial_delay_ms),
            ("answer", &summary.answer_ms),
        ] {
            if let Some(p) = p {
                println!(
                    "{name}: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
                    p.p50, p.p90, p.p99, p.max
                );
            }
        }
    }
    Ok(if summary.succeeded == summary.calls {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_CALL_FAILED)
    })
}

/// The interval between call starts for `--rate` calls per second (at most 1000: tokio's
/// interval takes no zero period, and no PBX test needs more).
fn pace_of(rate: f64) -> Result<Duration, UsageError> {
    let period = (rate > 0.0 && rate <= MAX_RATE)
        .then(|| Duration::try_from_secs_f64(1.0 / rate).ok())
        .flatten();
    period.ok_or_else(|| {
        UsageError(format!(
            "--rate must be a positive number of calls per second, at most {MAX_RATE}, not {rate}"
        ))
    })
}

const MAX_RATE: f64 = 1000.0;

/// One finished call's report. A call's local error or panic is that call's failure
/// (`local_error`), not the run's: the other calls go on and end with their BYE. Only a usage
/// error, the same for every call, ends the run.
fn settle(
    done: Result<anyhow::Result<Report>, tokio::task::JoinError>,
    target: &str,
) -> anyhow::Result<Report> {
    let message = match done {
        Ok(Ok(report)) => return Ok(report),
        Ok(Err(e)) if e.downcast_ref::<UsageError>().is_some() => return Err(e),
        Ok(Err(e)) => format!("{e:#}"),
        Err(e) => format!("the call's task failed: {e}"),
    };
    let mut report = Report {
        role: "uac",
        peer: target.to_string(),
        ..Default::default()
    };
    report.fail("local_error", message);
    Ok(report)
}

fn summarize(reports: &[Report]) -> Summary {
    let succeeded = reports.iter().filter(|r| r.ok).count() as u32;
    let mut failures = std::collections::BTreeMap::new();
    for e in reports.iter().filter_map(|r| r.error.as_ref()) {
        *failures.entry(e.kind.to_string()).or_insert(0) += 1;
    }
    Summary {
        calls: reports.len() as u32,
        succeeded,
        success_rate: if reports.is_empty() {
            0.0
        } else {
            succeeded as f64 / reports.len() as f64
        },
        failures,
        post_dial_delay_ms: percentiles(
            reports
                .iter()
                .filter_map(|r| r.sip.post_dial_delay_ms)
                .collect(),
        ),
        answer_ms: percentiles(reports.iter().filter_map(|r| r.sip.answer_ms).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_calls_local_error_or_panic_is_its_failure_and_a_usage_error_ends_the_run() {
        let panicked = tokio::spawn(async { panic!("boom") })
            .await
            .map(|()| unreachable!());
        let report = settle(panicked, "sip:1@x").unwrap();
        assert_eq!(report.error.as_ref().unwrap().kind, "local_error");
        assert!(!report.ok);
        let local = settle(
            Ok(Err(anyhow::anyhow!("binding the RTP socket"))),
            "sip:1@x",
        )
        .unwrap();
        assert_eq!(local.error.as_ref().unwrap().kind, "local_error");
        let usage = settle(Ok(Err(UsageError("bad".into()).into())), "sip:1@x");
        assert!(usage.is_err());
        assert_eq!(summarize(&[report, local]).failures["local_error"], 2);
    }

    #[test]
    fn the_rate_gives_a_nonzero_pace_or_a_usage_error() {
        assert_eq!(pace_of(4.0).unwrap(), Duration::from_millis(250));
        assert_eq!(pace_of(1000.0).unwrap(), Duration::from_millis(1));
        for bad in [0.0, -1.0, 1e12, f64::INFINITY, f64::NAN, 1e-320] {
            assert!(pace_of(bad).is_err(), "{bad}");
        }
    }
}
