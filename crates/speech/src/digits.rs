//! The digits in what the recogniser wrote: Whisper prints a spoken code as "4, 8, 2, 9, 1,
//! 3.", "482913", "4 8 2 9 1 3" or "Four eight two...", sometimes with "oh" for zero or
//! "double 5" for 55.

/// The digits spoken in `text`, in order. Words that are not digits are skipped, so "my code
/// is 4 8 2" gives "482"; a repeat word ("double", "triple") applies to the next digit.
pub fn digits_in(text: &str) -> String {
    let mut digits = String::new();
    let mut repeat = 1;
    for word in text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let word = word.to_ascii_lowercase();
        if let Some(times) = repeat_count(&word) {
            repeat = times;
            continue;
        }
        let found = if word.bytes().all(|b| b.is_ascii_digit()) {
            word
        } else if let Some(digit) = digit_word(&word) {
            digit.to_string()
        } else {
            repeat = 1;
            continue;
        };
        let mut chars = found.chars();
        if let Some(first) = chars.next() {
            for _ in 0..repeat {
                digits.push(first);
            }
        }
        digits.extend(chars);
        repeat = 1;
    }
    digits
}

fn repeat_count(word: &str) -> Option<usize> {
    match word {
        "double" => Some(2),
        "triple" => Some(3),
        _ => None,
    }
}

fn digit_word(word: &str) -> Option<char> {
    Some(match word {
        "zero" | "oh" | "o" => '0',
        "one" => '1',
        "two" => '2',
        "three" => '3',
        "four" => '4',
        "five" => '5',
        "six" => '6',
        "seven" => '7',
        "eight" => '8',
        "nine" => '9',
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::digits_in;

    #[test]
    fn whisper_spellings_of_a_code() {
        for text in [
            "4, 8, 2, 9, 1, 3.",
            " 482913",
            "4 8 2 9 1 3",
            "4-8-2-9-1-3",
            "Four, eight, two, nine, one, three.",
            "FOUR EIGHT TWO NINE ONE THREE",
            "four eight two. Nine one three!",
            "48, 29, 13.",
            "My code is 4 8 2 9 1 3.",
        ] {
            assert_eq!(digits_in(text), "482913", "{text:?}");
        }
    }

    #[test]
    fn zero_as_oh_and_repeats() {
        assert_eq!(digits_in("Oh, one, oh, two."), "0102");
        assert_eq!(digits_in("o 7 zero"), "070");
        assert_eq!(digits_in("double five, triple 0, 1"), "550001");
        assert_eq!(
            digits_in("double 42"),
            "442",
            "the repeat takes the next digit only"
        );
        assert_eq!(
            digits_in("double trouble 5"),
            "5",
            "a repeat word not before a digit"
        );
    }

    #[test]
    fn nothing_to_hear() {
        assert_eq!(digits_in(""), "");
        assert_eq!(digits_in("..."), "");
        assert_eq!(digits_in("Thank you."), "");
        assert_eq!(
            digits_in("Someone is on the phone"),
            "",
            "'one' inside a word"
        );
    }
}
