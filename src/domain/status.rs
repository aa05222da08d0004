//! The states a verification goes through and the ways a call attempt can end, as stored.

use std::fmt;
use std::str::FromStr;

macro_rules! stored_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                match s { $($text => Ok($name::$variant),)+ _ => Err(()) }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(|()| {
                    serde::de::Error::invalid_value(
                        serde::de::Unexpected::Str(&text),
                        &concat!("one of:" $(, " ", $text)+),
                    )
                })
            }
        }
    };
}

stored_enum! {
    /// A verification's status, as DESIGN.md names them for the web app.
    Status {
        Pending => "pending",
        Calling => "calling",
        Verified => "verified",
        Failed => "failed",
        Unanswered => "unanswered",
        Expired => "expired",
        Canceled => "canceled",
    }
}

stored_enum! {
    /// Which way the code goes: `enter_code`, the web app shows it and the callee keys or
    /// says it on the phone; `read_code`, the call reads it and the user types it into the
    /// web page, which checks it through the API.
    Mode {
        EnterCode => "enter_code",
        ReadCode => "read_code",
    }
}

stored_enum! {
    /// How a code that was checked came: keyed or said in a call, or typed into the web
    /// page (read-code mode).
    EntryMethod {
        Keypad => "keypad",
        Speech => "speech",
        WebPage => "web",
    }
}

stored_enum! {
    /// How a support caller was recognised by caller ID: `matched` to a verification
    /// support can act on, `unmatched` (none of ours, or not a usable number), `withheld`.
    CallerMatch {
        Matched => "matched",
        Unmatched => "unmatched",
        Withheld => "withheld",
    }
}

stored_enum! {
    /// What a staff account may do: `agent`s work the queue; `admin`s also read the audit
    /// log and export decisions.
    StaffRole {
        Agent => "agent",
        Admin => "admin",
    }
}

stored_enum! {
    /// Whether the support line takes a message now, or which of its limits is reached:
    /// the caller's messages of the last 24 hours, all callers' of the last hour, the space
    /// of the open requests' recordings, or the callers recording at once.
    Room {
        Open => "open",
        CallerFull => "caller_full",
        LineFull => "line_full",
        StorageFull => "storage_full",
        RecordingFull => "recording_full",
    }
}

stored_enum! {
    /// Where a manual-verification request stands.
    RequestStatus {
        Open => "open",
        Approved => "approved",
        Rejected => "rejected",
    }
}

impl Status {
    /// No call will change it any more.
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Pending | Status::Calling)
    }
}

stored_enum! {
    /// How one call attempt ended.
    CallOutcome {
        Verified => "verified",
        LockedOut => "locked_out",
        NoAcknowledgement => "no_ack",
        NoInput => "no_input",
        HungUp => "hung_up",
        Expired => "expired",
        Error => "error",
        Interrupted => "interrupted",
        Busy => "busy",
        NoAnswer => "no_answer",
        DialFailed => "dial_failed",
        DestinationRefused => "destination_refused",
        CodeRead => "code_read",
    }
}

impl CallOutcome {
    /// Worth calling again later (the callee was not reached or did not acknowledge), up to
    /// the dialer's limit; other endings are left to the user to start again.
    pub fn retried(self) -> bool {
        matches!(
            self,
            CallOutcome::NoAcknowledgement
                | CallOutcome::Busy
                | CallOutcome::NoAnswer
                | CallOutcome::DialFailed
        )
    }

    /// The call moved the verification out of `calling` itself (to verified, failed or
    /// expired), so it need not be put back to `pending`.
    pub fn ends_verification(self) -> bool {
        matches!(
            self,
            CallOutcome::Verified | CallOutcome::LockedOut | CallOutcome::Expired
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_text() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>(), Ok(*s));
        }
        for m in Mode::ALL {
            assert_eq!(m.as_str().parse::<Mode>(), Ok(*m));
        }
        for o in CallOutcome::ALL {
            assert_eq!(o.as_str().parse::<CallOutcome>(), Ok(*o));
        }
        assert!("bogus".parse::<Status>().is_err());
    }
}
