//! Maps a dotted field path (`upstreams.api.backends[1].weight`) to the line
//! of the YAML source that holds it, so errors found after parsing (a route
//! naming a missing upstream, weight 0) point at the right line. Also finds
//! duplicate keys, which serde would otherwise let the last one win.

use saphyr_parser::{Event, Parser};
use std::collections::HashMap;

/// Path → 1-based line of the key (mapping entries) or of the item
/// (sequence entries). Paths use serde_path_to_error's spelling.
#[derive(Debug, Default)]
pub struct Locator {
    lines: HashMap<String, usize>,
}

/// A key written twice in one mapping.
#[derive(Debug, PartialEq, Eq)]
pub struct DuplicateKey {
    pub path: String,
    pub line: usize,
}

enum Frame {
    Map {
        /// Length of the path before this mapping's key segment.
        base: usize,
        expecting_key: bool,
        keys: Vec<String>,
    },
    Seq {
        base: usize,
        index: usize,
    },
}

impl Locator {
    /// Walks the YAML events once. A syntax error yields an empty locator:
    /// serde_yaml_ng reports syntax errors with their own line.
    pub fn new(source: &str) -> (Locator, Option<DuplicateKey>) {
        let mut loc = Locator::default();
        let mut dup = None;
        let mut stack: Vec<Frame> = Vec::new();
        let mut path = String::new();
        for item in Parser::new_from_str(source) {
            let Ok((event, span)) = item else { break };
            let line = span.start.line();
            let starts_node = matches!(
                event,
                Event::Scalar(..)
                    | Event::Alias(_)
                    | Event::MappingStart(..)
                    | Event::SequenceStart(..)
            );
            if starts_node {
                match stack.last_mut() {
                    Some(Frame::Map {
                        base,
                        expecting_key,
                        keys,
                    }) if *expecting_key => {
                        path.truncate(*base);
                        let key = match &event {
                            Event::Scalar(text, ..) => text.to_string(),
                            _ => "?".to_string(),
                        };
                        if !path.is_empty() {
                            path.push('.');
                        }
                        path.push_str(&key);
                        if keys.contains(&key) {
                            if dup.is_none() {
                                dup = Some(DuplicateKey {
                                    path: path.clone(),
                                    line,
                                });
                            }
                        } else {
                            keys.push(key);
                        }
                        loc.lines.entry(path.clone()).or_insert(line);
                        *expecting_key = false;
                        // A complex key (a mapping or sequence used as a key)
                        // is skipped below like any nested node.
                        if !matches!(event, Event::Scalar(..) | Event::Alias(_)) {
                            stack.push(Self::frame_for(&event, path.len()));
                        }
                        continue;
                    }
                    Some(Frame::Map { expecting_key, .. }) => {
                        // The value of the current key: its path is already built.
                        *expecting_key = true;
                    }
                    Some(Frame::Seq { base, index }) => {
                        path.truncate(*base);
                        path.push_str(&format!("[{index}]"));
                        *index += 1;
                        loc.lines.entry(path.clone()).or_insert(line);
                    }
                    None => {}
                }
                if matches!(event, Event::MappingStart(..) | Event::SequenceStart(..)) {
                    stack.push(Self::frame_for(&event, path.len()));
                }
            } else if matches!(event, Event::MappingEnd | Event::SequenceEnd) {
                if let Some(Frame::Map { base, .. } | Frame::Seq { base, .. }) = stack.pop() {
                    path.truncate(base);
                }
            }
        }
        (loc, dup)
    }

    fn frame_for(event: &Event, base: usize) -> Frame {
        match event {
            Event::SequenceStart(..) => Frame::Seq { base, index: 0 },
            _ => Frame::Map {
                base,
                expecting_key: true,
                keys: Vec::new(),
            },
        }
    }

    /// The line of `path`, or of its closest written ancestor when the field
    /// itself is absent (a missing field is reported on its parent's line).
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(line) = self.lines.get(p) {
                return Some(*line);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
server:
  listen: \"0.0.0.0:8080\"
upstreams:
  api:
    backends:
      - addr: 127.0.0.1:9000
        weight: 5
      - { addr: 127.0.0.1:9001, weight: 0 }
routing:
  default:
    upstream: api
";

    #[test]
    fn finds_block_and_flow_fields() {
        let (loc, dup) = Locator::new(DOC);
        assert_eq!(dup, None);
        assert_eq!(loc.line_of("server.listen"), Some(2));
        assert_eq!(loc.line_of("upstreams.api.backends[0]"), Some(6));
        assert_eq!(loc.line_of("upstreams.api.backends[0].weight"), Some(7));
        assert_eq!(loc.line_of("upstreams.api.backends[1].weight"), Some(8));
        assert_eq!(loc.line_of("routing.default.upstream"), Some(11));
    }

    #[test]
    fn absent_field_falls_back_to_its_parent() {
        let (loc, _) = Locator::new(DOC);
        assert_eq!(loc.line_of("routing.default.load_balancer"), Some(10));
        assert_eq!(loc.line_of("admin.listen"), None);
    }

    #[test]
    fn reports_duplicate_keys() {
        let (_, dup) = Locator::new("a:\n  b: 1\n  c: 2\n  b: 3\n");
        assert_eq!(
            dup,
            Some(DuplicateKey {
                path: "a.b".into(),
                line: 4
            })
        );
    }
}
