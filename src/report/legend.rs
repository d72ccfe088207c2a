//! Chart legends in SVG laid out so that entries never overlap: each label's width is
//! estimated on the generous side (wider than any common sans-serif renders it), entries are
//! placed left to right and wrap to a new row when the next one would not fit, and an entry
//! wider than the whole row gets a row of its own (the SVG grows to hold it). The browser test
//! (`tests/report_browser.rs`) checks the same property on the rendered page.

use std::fmt::Write as _;

use super::page::esc;

/// Colour swatch size and the gaps around entries, in pixels.
const SWATCH: f64 = 10.0;
const SWATCH_GAP: f64 = 4.0;
const ENTRY_GAP: f64 = 16.0;
const ROW_GAP: f64 = 4.0;

/// A box in SVG user units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl Rect {
    /// Whether the two boxes share any interior point.
    pub fn intersects(&self, o: &Rect) -> bool {
        self.x < o.x + o.w && o.x < self.x + self.w && self.y < o.y + o.h && o.y < self.y + self.h
    }
}

/// A width that `text` at `font_px` does not exceed in a sans-serif font: wide letters (m, w,
/// capitals) count 0.95 em, everything else 0.65 em (Helvetica, Arial and DejaVu Sans set
/// lower case at 0.5 - 0.6 em on average, digits at 0.56 em).
pub fn text_width(text: &str, font_px: f64) -> f64 {
    text.chars()
        .map(|c| {
            if c.is_uppercase() || matches!(c, 'm' | 'w' | '@' | '%') || !c.is_ascii() {
                0.95
            } else {
                0.65
            }
        })
        .sum::<f64>()
        * font_px
}

/// A legend laid out: one box per entry (swatch and label together) and its total size.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub boxes: Vec<Rect>,
    pub width: f64,
    pub height: f64,
}

/// Place entries with these labels in rows of at most `max_width` starting at (`x0`, `y0`).
pub fn layout(labels: &[&str], x0: f64, y0: f64, max_width: f64, font_px: f64) -> Layout {
    let row_h = font_px.max(SWATCH) + ROW_GAP;
    let (mut x, mut y) = (x0, y0);
    let mut boxes = Vec::new();
    let mut width: f64 = 0.0;
    for label in labels {
        let w = SWATCH + SWATCH_GAP + text_width(label, font_px);
        if x > x0 && x + w > x0 + max_width {
            x = x0;
            y += row_h;
        }
        boxes.push(Rect {
            x,
            y,
            w,
            h: row_h - ROW_GAP,
        });
        width = width.max(x + w - x0);
        x += w + ENTRY_GAP;
    }
    let height = if boxes.is_empty() {
        0.0
    } else {
        y + row_h - y0
    };
    Layout {
        boxes,
        width,
        height,
    }
}

/// SVG for a legend of (`label`, `colour`) entries at (`x0`, `y0`), with its layout.
pub fn svg(
    entries: &[(String, String)],
    x0: f64,
    y0: f64,
    max_width: f64,
    font_px: f64,
) -> (String, Layout) {
    let labels: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    let l = layout(&labels, x0, y0, max_width, font_px);
    let mut s = String::new();
    for ((label, colour), b) in entries.iter().zip(&l.boxes) {
        let mid = b.y + b.h / 2.0;
        let _ = write!(
            s,
            "<g class=\"legend-entry\"><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{SWATCH}\" height=\"{SWATCH}\" fill=\"{colour}\"/><text x=\"{:.1}\" y=\"{:.1}\" dominant-baseline=\"central\" font-size=\"{font_px}\">{}</text></g>",
            b.x,
            mid - SWATCH / 2.0,
            b.x + SWATCH + SWATCH_GAP,
            mid,
            esc(label)
        );
    }
    (s, l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_never_overlap() {
        let labels = [
            "qwen2.5-coder-0.5b-instruct-cuda-int4-with-a-very-long-suffix",
            "reference",
            "WWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWW",
            "m",
            "mutants",
            "gemma-3-270m-it-native-precision-complete-mode",
            "x",
        ];
        let l = layout(&labels, 20.0, 100.0, 400.0, 11.0);
        assert_eq!(l.boxes.len(), labels.len());
        for (i, a) in l.boxes.iter().enumerate() {
            // Each box holds its label's generous width.
            assert!(a.w >= text_width(labels[i], 11.0));
            for b in &l.boxes[i + 1..] {
                assert!(!a.intersects(b), "{a:?} overlaps {b:?}");
            }
            // Within the row width unless the entry alone is wider.
            assert!(a.x + a.w <= 20.0 + 400.0 || a.x == 20.0, "{a:?}");
        }
        // The over-wide entry makes the legend wider than the row, and the legend's height
        // holds every row.
        assert!(l.width > 400.0);
        let bottom = l.boxes.iter().map(|b| b.y + b.h).fold(0.0, f64::max);
        assert!(100.0 + l.height >= bottom);
        // Short names share a row.
        let short = layout(&["a", "b", "c"], 0.0, 0.0, 400.0, 11.0);
        assert!(short.boxes.iter().all(|b| b.y == 0.0));
    }

    #[test]
    fn rect_intersection() {
        let a = Rect {
            x: 0.0,
            y: 0.0,
            w: 10.0,
            h: 10.0,
        };
        let touching = Rect { x: 10.0, ..a };
        let overlapping = Rect {
            x: 9.0,
            y: 9.0,
            ..a
        };
        assert!(!a.intersects(&touching));
        assert!(a.intersects(&overlapping));
    }
}
