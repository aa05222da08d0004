//! G.711 µ-law (PCMU) and A-law (PCMA): 8-bit companded samples at 8 kHz.
//!
//! Decoding is a 256-entry table built at compile time; encoding follows ITU-T G.711's
//! segment search (the classic Sun reference), which is as fast as a table for 8 kHz audio.

const BIAS: i32 = 0x84;
const CLIP: i32 = 32635;

/// µ-law byte → linear sample.
pub fn ulaw_to_linear(byte: u8) -> i16 {
    ULAW_DECODE[byte as usize]
}

/// A-law byte → linear sample.
pub fn alaw_to_linear(byte: u8) -> i16 {
    ALAW_DECODE[byte as usize]
}

static ULAW_DECODE: [i16; 256] = {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        let u = !(i as u8);
        let exponent = ((u >> 4) & 0x07) as i32;
        let mantissa = (u & 0x0f) as i32;
        let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
        table[i] = if u & 0x80 != 0 { -magnitude } else { magnitude } as i16;
        i += 1;
    }
    table
};

static ALAW_DECODE: [i16; 256] = {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        let a = (i as u8) ^ 0x55;
        let exponent = ((a >> 4) & 0x07) as i32;
        let mantissa = (a & 0x0f) as i32;
        let magnitude = match exponent {
            0 => (mantissa << 4) + 8,
            e => ((mantissa << 4) + 0x108) << (e - 1),
        };
        table[i] = if a & 0x80 != 0 { magnitude } else { -magnitude } as i16;
        i += 1;
    }
    table
};

/// Linear sample → µ-law byte.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    let mut pcm = sample as i32;
    let sign = if pcm < 0 {
        pcm = -pcm;
        0x80
    } else {
        0
    };
    pcm = pcm.min(CLIP) + BIAS;
    let exponent = segment(pcm >> 7);
    let mantissa = (pcm >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

/// Linear sample → A-law byte.
pub fn linear_to_alaw(sample: i16) -> u8 {
    let pcm = sample as i32;
    let (sign, magnitude) = if pcm >= 0 {
        (0x80, pcm)
    } else {
        (0x00, -pcm - 1)
    };
    let magnitude = magnitude.min(0x7fff);
    let byte = if magnitude < 256 {
        (magnitude >> 4) as u8
    } else {
        let exponent = segment(magnitude >> 8) + 1;
        ((exponent << 4) as u8) | ((magnitude >> (exponent + 3)) & 0x0f) as u8
    };
    (byte | sign) ^ 0x55
}

/// Position of the highest set bit of a value below 256 (0 for 0 or 1), capped at 7.
fn segment(value: i32) -> i32 {
    let mut exponent = 0;
    let mut v = value;
    while v > 1 && exponent < 7 {
        v >>= 1;
        exponent += 1;
    }
    exponent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_stay_within_a_quantisation_step() {
        for sample in (-32768i32..32768).step_by(7) {
            let s = sample as i16;
            let step = (s as i32).abs() / 16 + 16;
            let u = ulaw_to_linear(linear_to_ulaw(s)) as i32;
            let a = alaw_to_linear(linear_to_alaw(s)) as i32;
            assert!((u - s as i32).abs() <= step, "ulaw {s} -> {u}");
            assert!((a - s as i32).abs() <= step, "alaw {s} -> {a}");
        }
    }

    #[test]
    fn silence_bytes_are_the_well_known_ones() {
        assert_eq!(linear_to_ulaw(0), 0xff);
        assert_eq!(linear_to_alaw(0), 0xd5);
        for byte in 0..=255u8 {
            assert_eq!(
                linear_to_ulaw(ulaw_to_linear(byte)),
                byte | if byte == 0x7f { 0x80 } else { 0 }
            );
        }
    }
}
