//! A grouped bar chart as a PNG, with no plotting or image crate: RGB
//! pixels, one uncompressed (stored) deflate stream, CRC-32 and Adler-32
//! by hand. No text: the caption that goes with the figure names the
//! groups, the series colours and the grid spacing.

use std::io::Write;
use std::path::Path;

/// Series colours, in order (blue, orange, green, purple).
pub const COLOURS: [[u8; 3]; 4] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [148, 103, 189],
];

/// One group of bars: for each series `(value, whisker)` (whisker: a
/// higher figure such as p99 drawn as a thin line above the bar).
pub type Group = Vec<(f64, f64)>;

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Canvas {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }

    fn rect(&mut self, x0: usize, y0: usize, x1: usize, y1: usize, c: [u8; 3]) {
        for y in y0.min(self.h)..y1.min(self.h) {
            for x in x0.min(self.w)..x1.min(self.w) {
                let i = (y * self.w + x) * 3;
                self.px[i..i + 3].copy_from_slice(&c);
            }
        }
    }

    fn png(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity((self.w * 3 + 1) * self.h);
        for row in self.px.chunks(self.w * 3) {
            raw.push(0);
            raw.extend_from_slice(row);
        }
        let mut z = vec![0x78, 0x01];
        let mut blocks = raw.chunks(65_535).peekable();
        while let Some(b) = blocks.next() {
            z.push(u8::from(blocks.peek().is_none()));
            let len = b.len() as u16;
            z.extend_from_slice(&len.to_le_bytes());
            z.extend_from_slice(&(!len).to_le_bytes());
            z.extend_from_slice(b);
        }
        z.extend_from_slice(&adler32(&raw).to_be_bytes());
        let mut out = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&(self.w as u32).to_be_bytes());
        ihdr.extend_from_slice(&(self.h as u32).to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"IDAT", &z);
        chunk(&mut out, b"IEND", &[]);
        out
    }
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in bytes {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

/// Draws `groups` of bars (one colour per series) over light grid lines
/// every `grid` units, and writes the PNG to `path`.
pub fn bar_chart(path: &Path, groups: &[Group], grid: f64) -> std::io::Result<()> {
    let (w, h, margin) = (960usize, 480usize, 40usize);
    let mut c = Canvas::new(w, h);
    let top = groups
        .iter()
        .flatten()
        .map(|&(v, wk)| v.max(wk))
        .fold(0.0f64, f64::max)
        .max(grid);
    let plot_h = (h - 2 * margin) as f64;
    let y_of = |v: f64| h - margin - ((v / top) * plot_h).round().min(plot_h) as usize;
    if grid > 0.0 {
        let mut g = grid;
        while g <= top {
            let y = y_of(g);
            c.rect(margin, y, w - margin, y + 1, [220, 220, 220]);
            g += grid;
        }
    }
    c.rect(margin, margin, margin + 2, h - margin, [0, 0, 0]);
    c.rect(margin, h - margin, w - margin, h - margin + 2, [0, 0, 0]);
    let group_w = (w - 2 * margin) / groups.len().max(1);
    for (gi, g) in groups.iter().enumerate() {
        let bar_w = (group_w * 3 / 4) / g.len().max(1);
        let x0 = margin + gi * group_w + group_w / 8;
        for (si, &(v, whisker)) in g.iter().enumerate() {
            let x = x0 + si * bar_w;
            let colour = COLOURS[si % COLOURS.len()];
            c.rect(x + 2, y_of(v), x + bar_w - 2, h - margin, colour);
            if whisker > v {
                let mid = x + bar_w / 2;
                c.rect(mid, y_of(whisker), mid + 2, y_of(v), colour);
                c.rect(mid - 6, y_of(whisker), mid + 8, y_of(whisker) + 2, colour);
            }
        }
    }
    let mut f = std::fs::File::create(path)?;
    f.write_all(&c.png())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_known_values() {
        assert_eq!(crc32(b"IEND"), 0xae42_6082);
        assert_eq!(adler32(b"Wikipedia"), 0x11e6_0398);
    }

    #[test]
    fn writes_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.png");
        bar_chart(&p, &[vec![(1.0, 2.0), (3.0, 3.5)], vec![(2.0, 2.0)]], 1.0).unwrap();
        let b = std::fs::read(&p).unwrap();
        assert_eq!(&b[..8], &[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a]);
        assert_eq!(&b[b.len() - 8..b.len() - 4], b"IEND");
    }
}
