//! Token sequences for language models: a character vocabulary, windows of a text as a
//! [`DataSource`], and n-digit addition written as tokens (minGPT's adder), a task that
//! needs no download. Batches are u32 token ids `[batch, time]` and next-token targets.

use super::DataSource;
use rand::seq::SliceRandom;
use ringtrain_runtime::{rng_from_seed, Device, Error, Result, Tensor};
use std::path::Path;

/// A batch of token windows: `inputs[b, t]` and the token after each, `targets[b, t]`.
/// Only positions from `loss_from` on are trained on (a prompt before them is context).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub batch: usize,
    pub time: usize,
    pub loss_from: usize,
}

impl TokenBatch {
    /// The inputs as a u32 tensor `[batch, time]` on `device`.
    pub fn inputs(&self, device: &Device) -> Result<Tensor> {
        Tensor::from_slice_u32(&self.inputs, (self.batch, self.time), device)
    }

    /// The targets of the trained positions, u32 `[batch, time - loss_from]`.
    pub fn targets(&self, device: &Device) -> Result<Tensor> {
        Tensor::from_slice_u32(&self.targets, (self.batch, self.time), device)?.narrow(
            1,
            self.loss_from,
            self.time - self.loss_from,
        )
    }

    /// Mean next-token cross-entropy of `logits` (`[batch, time, vocab]`) over the
    /// trained positions.
    pub fn loss(&self, logits: &Tensor, device: &Device) -> Result<Tensor> {
        let trained = self.time - self.loss_from;
        logits
            .narrow(1, self.loss_from, trained)?
            .cross_entropy(&self.targets(device)?)
    }
}

/// The characters of a text, each a token, in code point order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharVocab {
    chars: Vec<char>,
}

impl CharVocab {
    /// Every distinct character of `text`.
    pub fn from_text(text: &str) -> Self {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Self { chars }
    }

    /// The vocabulary whose characters, in order, make `chars` (as [`CharVocab::as_string`] gives).
    pub fn from_chars(chars: &str) -> Result<Self> {
        let v: Vec<char> = chars.chars().collect();
        if v.is_empty() || v.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::InvalidArgument(
                "a character vocabulary must be distinct characters in increasing order".into(),
            ));
        }
        Ok(Self { chars: v })
    }

    pub fn len(&self) -> usize {
        self.chars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The characters, in token order.
    pub fn as_string(&self) -> String {
        self.chars.iter().collect()
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .map(|c| {
                self.chars.binary_search(&c).map(|i| i as u32).map_err(|_| {
                    Error::InvalidArgument(format!("character {c:?} is not in the vocabulary"))
                })
            })
            .collect()
    }

    pub fn decode(&self, tokens: &[u32]) -> String {
        tokens
            .iter()
            .map(|&t| self.chars.get(t as usize).copied().unwrap_or('\u{fffd}'))
            .collect()
    }
}

/// Every window of `block_size + 1` consecutive tokens of a sequence, as a sample: the
/// first `block_size` are the input and the last `block_size` the targets. A trainer's
/// shuffled order makes them random windows.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenWindows {
    tokens: Vec<u32>,
    block_size: usize,
}

impl TokenWindows {
    pub fn new(tokens: Vec<u32>, block_size: usize) -> Result<Self> {
        if block_size == 0 {
            return Err(Error::InvalidArgument(
                "the block size must be at least 1".into(),
            ));
        }
        if tokens.len() <= block_size {
            return Err(Error::InvalidArgument(format!(
                "{} tokens are not one block of {block_size} plus a target; use a longer text \
                 or a smaller --block-size",
                tokens.len()
            )));
        }
        Ok(Self { tokens, block_size })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }
}

impl DataSource for TokenWindows {
    type Batch = TokenBatch;

    fn len(&self) -> usize {
        self.tokens.len() - self.block_size
    }

    fn batch(&self, indices: &[usize]) -> Result<TokenBatch> {
        let t = self.block_size;
        let mut inputs = Vec::with_capacity(indices.len() * t);
        let mut targets = Vec::with_capacity(indices.len() * t);
        for &i in indices {
            let window = self.tokens.get(i..i + t + 1).ok_or_else(|| {
                Error::InvalidArgument(format!("window {i} asked for, there are {}", self.len()))
            })?;
            inputs.extend_from_slice(&window[..t]);
            targets.extend_from_slice(&window[1..]);
        }
        Ok(TokenBatch {
            inputs,
            targets,
            batch: indices.len(),
            time: t,
            loss_from: 0,
        })
    }
}

/// A UTF-8 text file as a character vocabulary and its tokens, split into training and
/// validation windows (the last `val_fraction` of the text validates).
pub struct TextCorpus {
    pub vocab: CharVocab,
    pub train: TokenWindows,
    pub val: TokenWindows,
}

impl TextCorpus {
    pub fn load(path: &Path, block_size: usize, val_fraction: f64) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::msg(format!("cannot read {}: {e}", path.display())))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            Error::msg(format!(
                "{} is not UTF-8 text (invalid byte at offset {})",
                path.display(),
                e.utf8_error().valid_up_to()
            ))
        })?;
        Self::from_text(&text, block_size, val_fraction)
            .map_err(|e| Error::msg(format!("{}: {e}", path.display())))
    }

    pub fn from_text(text: &str, block_size: usize, val_fraction: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(Error::InvalidArgument(format!(
                "the validation fraction must be in [0, 1), got {val_fraction}"
            )));
        }
        let vocab = CharVocab::from_text(text);
        let tokens = vocab.encode(text)?;
        let n_val = ((tokens.len() as f64 * val_fraction) as usize).max(block_size + 1);
        if tokens.len() < n_val + block_size + 1 {
            return Err(Error::InvalidArgument(format!(
                "a text of {} characters is too short for training and validation windows of \
                 {block_size}; use a longer text or a smaller --block-size",
                tokens.len()
            )));
        }
        let split = tokens.len() - n_val;
        Ok(Self {
            train: TokenWindows::new(tokens[..split].to_vec(), block_size)?,
            val: TokenWindows::new(tokens[split..].to_vec(), block_size)?,
            vocab,
        })
    }
}

/// n-digit addition as tokens (minGPT's adder): `a` and `b` zero-padded to `digits`
/// digits, then their sum's `digits + 1` digits least significant first (so a left-to-
/// right model produces the carries in order): `12+34=` then `640` for 46. Tokens are
/// the digits 0-9, `+` (10) and `=` (11). All `10^digits x 10^digits` problems are made,
/// shuffled by a seed, and split into training and held-out ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Addition {
    digits: usize,
    problems: Vec<(u64, u64)>,
}

/// Tokens of [`Addition`].
pub const PLUS: u32 = 10;
pub const EQUALS: u32 = 11;
pub const ADDITION_VOCAB: usize = 12;

impl Addition {
    /// The training and held-out problems of `digits`-digit addition (`held_out` of them
    /// held out).
    pub fn split(digits: usize, held_out: usize, seed: u64) -> Result<(Addition, Addition)> {
        // Every problem is made: 10^6 pairs at 3 digits, 10^8 (1.6 GB) at 4.
        if !(1..=3).contains(&digits) {
            return Err(Error::InvalidArgument(format!(
                "addition takes 1 to 3 digits, got {digits}"
            )));
        }
        let n = 10u64.pow(digits as u32);
        let mut all: Vec<(u64, u64)> = (0..n).flat_map(|a| (0..n).map(move |b| (a, b))).collect();
        if held_out >= all.len() {
            return Err(Error::InvalidArgument(format!(
                "{held_out} held-out problems leave none of the {} to train on",
                all.len()
            )));
        }
        all.shuffle(&mut rng_from_seed(seed));
        let test = all.split_off(all.len() - held_out);
        Ok((
            Addition {
                digits,
                problems: all,
            },
            Addition {
                digits,
                problems: test,
            },
        ))
    }

    pub fn digits(&self) -> usize {
        self.digits
    }

    /// Tokens before the answer: `a + b =`.
    pub fn prompt_len(&self) -> usize {
        2 * self.digits + 2
    }

    pub fn answer_len(&self) -> usize {
        self.digits + 1
    }

    /// The whole sequence of problem `i`: prompt, then answer.
    pub fn sequence(&self, i: usize) -> Option<Vec<u32>> {
        let &(a, b) = self.problems.get(i)?;
        let number = |mut v: u64, len: usize| {
            let mut d: Vec<u32> = (0..len)
                .map(|_| {
                    let x = (v % 10) as u32;
                    v /= 10;
                    x
                })
                .collect();
            d.reverse();
            d
        };
        let mut s = number(a, self.digits);
        s.push(PLUS);
        s.extend(number(b, self.digits));
        s.push(EQUALS);
        let mut sum = number(a + b, self.digits + 1);
        sum.reverse();
        s.extend(sum);
        Some(s)
    }

    /// The prompts of problems `range` as u32 `[n, prompt_len]`, and their answers.
    pub fn prompts(&self, range: std::ops::Range<usize>) -> (Vec<u32>, Vec<u32>) {
        let (mut prompts, mut answers) = (Vec::new(), Vec::new());
        for i in range {
            if let Some(s) = self.sequence(i) {
                prompts.extend_from_slice(&s[..self.prompt_len()]);
                answers.extend_from_slice(&s[self.prompt_len()..]);
            }
        }
        (prompts, answers)
    }

    /// Written out: `12+34=46`.
    pub fn describe(&self, tokens: &[u32]) -> String {
        let p = self.prompt_len().min(tokens.len());
        let show = |t: &u32| match *t {
            PLUS => '+',
            EQUALS => '=',
            d if d < 10 => char::from(b'0' + d as u8),
            _ => '?',
        };
        let mut s: String = tokens[..p].iter().map(show).collect();
        s.extend(tokens[p..].iter().rev().map(show));
        s
    }
}

impl DataSource for Addition {
    type Batch = TokenBatch;

    fn len(&self) -> usize {
        self.problems.len()
    }

    /// Inputs are a sequence but its last token; the trained positions are those that
    /// predict the answer.
    fn batch(&self, indices: &[usize]) -> Result<TokenBatch> {
        let time = self.prompt_len() + self.answer_len() - 1;
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        for &i in indices {
            let s = self.sequence(i).ok_or_else(|| {
                Error::InvalidArgument(format!("problem {i} asked for, there are {}", self.len()))
            })?;
            inputs.extend_from_slice(&s[..time]);
            targets.extend_from_slice(&s[1..]);
        }
        Ok(TokenBatch {
            inputs,
            targets,
            batch: indices.len(),
            time,
            loss_from: self.prompt_len() - 1,
        })
    }
}
