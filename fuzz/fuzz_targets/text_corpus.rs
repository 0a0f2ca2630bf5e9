//! The GPT example's text corpora: a character vocabulary and training windows from any
//! text, and a vocabulary from a checkpoint's metadata (`CharVocab::from_chars`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringtrain::data::{CharVocab, TextCorpus};

fuzz_target!(|data: &[u8]| {
    let Some((&block, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let block = 1 + usize::from(block % 16);
    if let Ok(corpus) = TextCorpus::from_text(text, block, 0.1) {
        let tokens = corpus.vocab.encode(text).expect("the text's own characters");
        assert_eq!(corpus.vocab.decode(&tokens), text);
    }
    if let Ok(vocab) = CharVocab::from_chars(text) {
        assert_eq!(vocab.as_string(), text);
    }
});
