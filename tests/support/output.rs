//! Keeps the last lines a child process printed, to show them when a test fails.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

#[derive(Clone)]
pub struct Output {
    inner: Arc<Mutex<Lines>>,
}

struct Lines {
    kept: VecDeque<String>,
    capacity: usize,
    dropped: usize,
}

impl Output {
    /// Keeps at most `capacity` lines (the newest).
    pub fn new(capacity: usize) -> Output {
        Output {
            inner: Arc::new(Mutex::new(Lines {
                kept: VecDeque::new(),
                capacity,
                dropped: 0,
            })),
        }
    }

    /// Reads `stream` to its end on a thread, keeping each line as `"{name}| {line}"` and also
    /// handing it, as read, to `each_line`. The thread ends with the stream.
    pub fn capture(
        &self,
        name: &'static str,
        stream: impl Read + Send + 'static,
        mut each_line: impl FnMut(String) + Send + 'static,
    ) -> JoinHandle<()> {
        let output = self.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match reader.read_until(b'\n', &mut raw) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = strip_ansi(String::from_utf8_lossy(&raw).trim_end_matches(['\n', '\r']));
                output.push(format!("{name}| {line}"));
                each_line(line);
            }
        })
    }

    fn push(&self, line: String) {
        let mut lines = self
            .inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if lines.kept.len() == lines.capacity {
            lines.kept.pop_front();
            lines.dropped += 1;
        }
        lines.kept.push_back(line);
    }

    /// Everything kept, one line each.
    pub fn text(&self) -> String {
        let lines = self
            .inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut text = String::new();
        if lines.dropped > 0 {
            text.push_str(&format!("[{} earlier lines not kept]\n", lines.dropped));
        }
        for line in &lines.kept {
            text.push_str(line);
            text.push('\n');
        }
        if lines.kept.is_empty() {
            text.push_str("[no output]\n");
        }
        text
    }
}

/// Removes terminal colour sequences (`ESC [ … letter`).
fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}
