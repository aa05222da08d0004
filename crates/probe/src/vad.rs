//! Energy-based endpointing: finds where speech (a prompt) starts and ends in what the
//! probe hears, frame by frame, so that the script can act "after the prompt".

/// Tuning of the endpointer.
#[derive(Debug, Clone, Copy)]
pub struct VadConfig {
    /// A frame louder than this (dBFS) counts as speech.
    pub threshold_dbfs: f64,
    /// Consecutive loud frames before speech is said to start (ignores clicks).
    pub start_frames: u32,
    /// Consecutive quiet frames before speech is said to end (bridges pauses between words).
    pub end_frames: u32,
}

/// A change the endpointer saw; `frame` is the index of the frame that decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpeechEdge {
    /// Speech began at frame `first_loud` (the first loud frame of the run).
    Started { first_loud: u64 },
    /// Speech ended after frame `last_loud`.
    Ended { last_loud: u64 },
}

#[derive(Debug)]
pub struct Endpointer {
    config: VadConfig,
    frame: u64,
    speaking: bool,
    loud_run: u32,
    quiet_run: u32,
    last_loud: u64,
}

impl Endpointer {
    pub fn new(config: VadConfig) -> Self {
        Self {
            config,
            frame: 0,
            speaking: false,
            loud_run: 0,
            quiet_run: 0,
            last_loud: 0,
        }
    }

    /// Feeds one frame of samples; returns the edge it completed, if any.
    pub fn push(&mut self, samples: &[i16]) -> Option<SpeechEdge> {
        let index = self.frame;
        self.frame += 1;
        let loud = level_dbfs(samples) > self.config.threshold_dbfs;
        if loud {
            self.loud_run += 1;
            self.quiet_run = 0;
            self.last_loud = index;
        } else {
            self.loud_run = 0;
            self.quiet_run += 1;
        }
        if !self.speaking && self.loud_run >= self.config.start_frames {
            self.speaking = true;
            return Some(SpeechEdge::Started {
                first_loud: index + 1 - self.loud_run as u64,
            });
        }
        if self.speaking && self.quiet_run >= self.config.end_frames {
            self.speaking = false;
            return Some(SpeechEdge::Ended {
                last_loud: self.last_loud,
            });
        }
        None
    }
}

/// RMS level of a frame in dBFS (-inf for digital silence, 0 for a full-scale square wave).
pub fn level_dbfs(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return f64::NEG_INFINITY;
    }
    let sum: f64 = samples.iter().map(|&s| (s as f64).powi(2)).sum();
    let rms = (sum / samples.len() as f64).sqrt();
    20.0 * (rms / 32768.0).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_prompt_between_silences_and_bridges_short_pauses() {
        let mut vad = Endpointer::new(VadConfig {
            threshold_dbfs: -40.0,
            start_frames: 2,
            end_frames: 3,
        });
        let loud = [8000i16, -8000].repeat(80);
        let quiet = [0i16; 160];
        let frames: Vec<&[i16]> = [&quiet[..]; 3]
            .into_iter()
            .chain([&loud[..]; 4])
            .chain([&quiet[..]; 2]) // a pause shorter than end_frames
            .chain([&loud[..]; 2])
            .chain([&quiet[..]; 5])
            .collect();
        let edges: Vec<SpeechEdge> = frames.into_iter().filter_map(|f| vad.push(f)).collect();
        assert_eq!(
            edges,
            [
                SpeechEdge::Started { first_loud: 3 },
                SpeechEdge::Ended { last_loud: 10 }
            ]
        );
    }
}
