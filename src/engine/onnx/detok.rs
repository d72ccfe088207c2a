//! Incremental detokenization: text grows only by complete characters, so that stop strings are
//! found exactly where the full decode would put them.

use tokenizers::Tokenizer;

/// Decodes generated ids as they arrive.
#[derive(Debug, Default, Clone)]
pub struct Detokenizer {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl Detokenizer {
    /// The text already emitted since `prefix_offset`, and the text of everything since then
    /// (the new tokens included): the new text is what `full` adds to `prefix`.
    fn window(&self, tok: &Tokenizer) -> Result<(String, String), String> {
        let decode = |ids: &[u32]| tok.decode(ids, false).map_err(|e| e.to_string());
        Ok((
            decode(&self.ids[self.prefix_offset..self.read_offset])?,
            decode(&self.ids[self.prefix_offset..])?,
        ))
    }

    /// Add a token; returns the newly completed text (possibly empty while a character is split
    /// across tokens).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String, String> {
        self.ids.push(id);
        let (prefix, full) = self.window(tok)?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.starts_with(&prefix) {
            let piece = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(piece)
        } else {
            Ok(String::new())
        }
    }

    /// Whatever text is still held back (an incomplete character at the end), decoded lossily.
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String, String> {
        if self.read_offset == self.ids.len() {
            return Ok(String::new());
        }
        let (prefix, full) = self.window(tok)?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(full.get(prefix.len()..).unwrap_or(&full).to_string())
    }
}
