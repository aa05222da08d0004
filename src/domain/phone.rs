//! Phone numbers: parsing to E.164, the destination policy against toll fraud, masking for logs.

use std::fmt;

use phonenumber::metadata::DATABASE;
use phonenumber::{Mode, Type};

/// A valid number in E.164 form (`+14155550101`), allowed by the destination policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneNumber(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("not a phone number in international form (+ and country code, e.g. +14155550101)")]
    Unparseable,
    #[error("not a valid phone number for its country")]
    Invalid,
    #[error("an extension cannot be dialled: give the number without it")]
    Extension,
    #[error("calls to country {0} are not allowed (dialer.allowed_countries)")]
    CountryNotAllowed(String),
    #[error("{0} numbers are not called (premium-rate and shared-cost numbers are refused)")]
    SpecialNumber(&'static str),
}

/// Why a QA call-back may not ring a number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallBackRefused {
    #[error(transparent)]
    Number(PhoneError),
    #[error("the number is not one of qa.callback_numbers")]
    NotListed,
}

/// Which destinations may be called.
#[derive(Debug, Clone)]
pub struct PhonePolicy {
    /// ISO 3166 codes, upper case, e.g. `US`.
    pub allowed_countries: Vec<String>,
}

impl PhonePolicy {
    /// Parse `input` (which must start with `+`) and apply the policy.
    pub fn parse(&self, input: &str) -> Result<PhoneNumber, PhoneError> {
        let trimmed = input.trim();
        if !trimmed.starts_with('+') || trimmed.len() > 32 {
            return Err(PhoneError::Unparseable);
        }
        let number = phonenumber::parse(None, trimmed).map_err(|_| PhoneError::Unparseable)?;
        if number.extension().is_some() {
            return Err(PhoneError::Extension);
        }
        if !number.is_valid() {
            return Err(PhoneError::Invalid);
        }
        let country = number
            .country()
            .id()
            .map(|id| format!("{id:?}"))
            .unwrap_or_else(|| format!("+{}", number.country().code()));
        if !self
            .allowed_countries
            .iter()
            .any(|c| c.eq_ignore_ascii_case(&country))
        {
            return Err(PhoneError::CountryNotAllowed(country));
        }
        match number.number_type(&DATABASE) {
            Type::PremiumRate => return Err(PhoneError::SpecialNumber("premium-rate")),
            Type::SharedCost => return Err(PhoneError::SpecialNumber("shared-cost")),
            Type::Uan => return Err(PhoneError::SpecialNumber("universal access")),
            Type::Voicemail => return Err(PhoneError::SpecialNumber("voicemail")),
            Type::Pager => return Err(PhoneError::SpecialNumber("pager")),
            _ => {}
        }
        Ok(PhoneNumber(number.format().mode(Mode::E164).to_string()))
    }
}

impl PhonePolicy {
    /// A caller ID as trunks send it (`+14155550101`, `14155550101`, `4155550101`) in E.164,
    /// the form verifications are stored in; `None` if it is no valid number. National forms
    /// are read as numbers of the allowed countries. No destination policy: nobody is called.
    pub fn caller_id(&self, raw: &str) -> Option<PhoneNumber> {
        let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
        if digits.is_empty() || digits.len() > 15 {
            return None;
        }
        let international = phonenumber::parse(None, format!("+{digits}")).ok();
        // Without a +, national forms first: 4155550101 is a US number, not +41 5555 0101.
        let national = (!raw.trim_start().starts_with('+'))
            .then(|| {
                self.allowed_countries.iter().filter_map(|country| {
                    let id = country.parse().ok()?;
                    phonenumber::parse(Some(id), &digits).ok()
                })
            })
            .into_iter()
            .flatten();
        national
            .chain(international)
            .filter(|n| n.is_valid())
            .map(|n| PhoneNumber(n.format().mode(Mode::E164).to_string()))
            .next()
    }
}

impl PhoneNumber {
    /// A number already checked, as read back from the store.
    pub fn from_stored(e164: String) -> Self {
        Self(e164)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form for logs and screens: `+1415*****01`.
    pub fn masked(&self) -> Masked<'_> {
        Masked(&self.0)
    }
}

/// Displays a number with its middle hidden.
pub struct Masked<'a>(&'a str);

impl fmt::Display for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        mask(self.0, f)
    }
}

fn mask(number: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let chars: Vec<char> = number.chars().collect();
    if chars.len() <= 7 {
        return f.write_str(&"*".repeat(chars.len()));
    }
    for (i, c) in chars.iter().enumerate() {
        let shown = i < 5 || i >= chars.len() - 2;
        f.write_fmt(format_args!("{}", if shown { *c } else { '*' }))?;
    }
    Ok(())
}

/// Mask any string that may hold a number (e.g. a caller ID from Asterisk).
pub fn masked(raw: &str) -> Masked<'_> {
    Masked(raw)
}

#[cfg(test)]
mod tests {
    #[test]
    fn caller_ids_in_the_forms_trunks_send() {
        let policy = PhonePolicy {
            allowed_countries: vec!["US".into(), "CA".into()],
        };
        for raw in [
            "+14155550101",
            "14155550101",
            "4155550101",
            "+1 (415) 555-0101",
        ] {
            assert_eq!(
                policy.caller_id(raw).map(|n| n.0),
                Some("+14155550101".to_string()),
                "{raw}"
            );
        }
        assert_eq!(
            policy.caller_id("+442079460018").map(|n| n.0),
            Some("+442079460018".to_string())
        );
        for raw in ["", "unknown", "anonymous", "12", "+1234567890123456789"] {
            assert_eq!(policy.caller_id(raw), None, "{raw}");
        }
    }

    use super::*;

    fn policy() -> PhonePolicy {
        PhonePolicy {
            allowed_countries: vec!["US".into(), "CA".into()],
        }
    }

    #[test]
    fn normalises_valid_numbers() {
        let n = policy().parse(" +1 (415) 555-0101 ").unwrap();
        assert_eq!(n.as_str(), "+14155550101");
        assert_eq!(
            policy().parse("+16135550123").unwrap().as_str(),
            "+16135550123"
        );
    }

    #[test]
    fn refuses_bad_and_disallowed_numbers() {
        assert_eq!(policy().parse("4155550101"), Err(PhoneError::Unparseable));
        assert_eq!(policy().parse("+abc"), Err(PhoneError::Unparseable));
        assert_eq!(policy().parse(""), Err(PhoneError::Unparseable));
        assert_eq!(policy().parse("+1415555"), Err(PhoneError::Invalid));
        assert_eq!(
            policy().parse("+442079460000"),
            Err(PhoneError::CountryNotAllowed("GB".into()))
        );
        assert_eq!(
            policy().parse("+19005550123"),
            Err(PhoneError::SpecialNumber("premium-rate"))
        );
    }

    #[test]
    fn masks_the_middle() {
        let n = PhoneNumber::from_stored("+14155550101".into());
        assert_eq!(n.masked().to_string(), "+1415*****01");
        assert_eq!(masked("7000").to_string(), "****");
    }
}
