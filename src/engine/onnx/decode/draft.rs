//! Draft tokens for exact speculative decoding on the host: prompt lookup. Code copies what
//! came before (the signature and docstring of the prompt, names, whole lines of an earlier
//! block), so the tokens that followed the last earlier occurrence of the sequence's final
//! n-gram are a cheap guess of what comes next. The batch feeds them after the row's last
//! token in one step and keeps each only while it is the token the row would have chosen
//! (see `Batch::verify`): drafts decide how many tokens a step yields, never which.

/// The longest n-gram looked up.
pub(crate) const MAX_NGRAM: usize = 3;

/// A row's first draft length, and the longest it grows to.
pub(crate) const FIRST_DRAFT: usize = 2;
pub(crate) const LONGEST_DRAFT: usize = 8;

/// Up to `max` tokens that followed the most recent earlier occurrence of the last n tokens
/// of `prompt` + `generated` (n from [`MAX_NGRAM`] down to `min_ngram`); empty when none
/// occurs.
pub(crate) fn propose(prompt: &[u32], generated: &[u32], max: usize, min_ngram: usize) -> Vec<u32> {
    if max == 0 {
        return Vec::new();
    }
    let all: Vec<u32> = prompt.iter().chain(generated).copied().collect();
    for n in (min_ngram.max(1)..=MAX_NGRAM).rev() {
        if all.len() <= n {
            continue;
        }
        let tail = &all[all.len() - n..];
        // The latest earlier start whose n tokens equal the tail (not the tail itself).
        let found = (0..all.len() - n).rev().find(|&i| &all[i..i + n] == tail);
        if let Some(i) = found {
            let from = i + n;
            let to = (from + max).min(all.len());
            if from < to {
                return all[from..to].to_vec();
            }
        }
    }
    Vec::new()
}

/// The next draft length of a row that proposed `proposed` tokens and had `accepted` of them
/// kept: twice as long after all were kept, else one more than were kept.
pub(crate) fn next_len(current: usize, proposed: usize, accepted: usize) -> usize {
    if proposed == 0 {
        return current;
    }
    match accepted == proposed {
        true => (current * 2).min(LONGEST_DRAFT),
        false => (accepted + 1).clamp(1, LONGEST_DRAFT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tokens_after_the_latest_earlier_ngram_are_proposed() {
        // "def f ( x ) : return f ( x" -> after the latest earlier "f ( x": ") : return".
        let prompt = [1, 2, 3, 4, 5, 6, 7];
        let generated = [2, 3, 4];
        assert_eq!(propose(&prompt, &generated, 3, 2), vec![5, 6, 7]);
        assert_eq!(propose(&prompt, &generated, 2, 2), vec![5, 6]);
        // The latest occurrence wins over an earlier one.
        assert_eq!(propose(&[9, 8, 1, 9, 8, 2], &[9, 8], 1, 2), vec![2]);
        // Only the longest n-gram that occurs decides.
        assert_eq!(propose(&[5, 9, 8, 1, 7, 8, 2], &[9, 8], 1, 1), vec![1]);
    }

    #[test]
    fn nothing_is_proposed_without_an_earlier_occurrence() {
        assert!(propose(&[1, 2, 3], &[4, 5], 4, 2).is_empty());
        assert!(propose(&[1, 2], &[], 4, 2).is_empty());
        assert!(propose(&[1, 2, 1, 2], &[], 0, 1).is_empty());
        // A unigram is looked up only when asked.
        assert!(propose(&[7, 1, 2], &[7], 3, 2).is_empty());
        assert_eq!(propose(&[7, 1, 2], &[7], 3, 1), vec![1, 2, 7]);
    }

    #[test]
    fn draft_length_grows_on_success_and_shrinks_on_a_miss() {
        assert_eq!(next_len(2, 2, 2), 4);
        assert_eq!(next_len(8, 8, 8), LONGEST_DRAFT);
        assert_eq!(next_len(4, 4, 1), 2);
        assert_eq!(next_len(4, 3, 0), 1);
        assert_eq!(next_len(4, 0, 0), 4);
    }
}
