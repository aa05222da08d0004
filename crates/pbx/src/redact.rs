//! What may reach a log of what a peer sent: phone numbers inside channel names and caller
//! IDs are masked, so that logs hold no number in full.

/// Mask every run of 7 or more digits inside `text`, e.g. a channel name such as
/// `Local/+14155550101@callverify-00000001;2`, keeping its first 4 and last 2 digits.
pub fn mask_digit_runs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 7 {
            out.push_str(&run[..4]);
            out.extend(std::iter::repeat_n('*', run.len() - 6));
            out.push_str(&run[run.len() - 2..]);
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::mask_digit_runs;

    #[test]
    fn masks_long_digit_runs_only() {
        assert_eq!(
            mask_digit_runs("Local/+14155550101@callverify-00000001;2"),
            "Local/+1415*****01@callverify-0000**01;2"
        );
        assert_eq!(mask_digit_runs("PJSIP/trunk-0004"), "PJSIP/trunk-0004");
    }
}
