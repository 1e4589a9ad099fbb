//! Merges the profiles of several processes into one pprof profile: the
//! samples are concatenated, each tagged with labels naming its process,
//! and the tables they point into (strings, mappings, functions,
//! locations) are rebuilt with new ids, equal entries shared. Sound for
//! profiles of the same sample types (the values are absolute counts and
//! nanoseconds, so they add); anything else is refused.

use std::collections::HashMap;

use pprof::protos::{Function, Label, Line, Location, Mapping, Sample, ValueType};

use super::{Profile, ProfileError};

/// A label added to every sample of one part, e.g. `thread="loop-0"`, or
/// `worker=1` with unit `index`. A numeric label of value 0 needs a unit:
/// pprof's reader drops one with neither value nor unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tag {
    Str(&'static str, String),
    /// Key, value, unit ("" for none).
    Num(&'static str, i64, &'static str),
}

/// One process's profile and the labels its samples get.
pub struct Part<'a> {
    pub profile: &'a Profile,
    pub tags: Vec<Tag>,
}

/// One profile holding the samples of every part (at least one). The
/// time span covers all parts; `comments` are added to the profile's
/// comments (`go tool pprof -comments`).
pub fn merge(parts: &[Part<'_>], comments: &[String]) -> Result<Profile, ProfileError> {
    let first = parts
        .first()
        .ok_or_else(|| ProfileError::Failed("no profile to merge".into()))?
        .profile;
    let mut b = Builder::default();
    b.string("");
    let types = sample_types(first)?;
    for part in parts {
        if sample_types(part.profile)? != types {
            return Err(ProfileError::Failed(format!(
                "cannot merge profiles of different sample types: {types:?} and {:?}",
                sample_types(part.profile)?
            )));
        }
    }
    let mut start = i64::MAX;
    let mut end = i64::MIN;
    for part in parts {
        b.add(part)?;
        let p = part.profile;
        start = start.min(p.time_nanos);
        end = end.max(p.time_nanos.saturating_add(p.duration_nanos));
    }
    let s = Strings(&first.string_table);
    let value_type = |b: &mut Builder, v: &ValueType| -> Result<ValueType, ProfileError> {
        Ok(ValueType {
            ty: b.string(s.get(v.ty)?),
            unit: b.string(s.get(v.unit)?),
        })
    };
    let mut sample_type = Vec::new();
    for v in &first.sample_type {
        sample_type.push(value_type(&mut b, v)?);
    }
    let period_type = match &first.period_type {
        Some(v) => Some(value_type(&mut b, v)?),
        None => None,
    };
    let mut comment = Vec::new();
    for part in parts {
        let s = Strings(&part.profile.string_table);
        for &c in &part.profile.comment {
            comment.push(b.string(s.get(c)?));
        }
    }
    for c in comments {
        comment.push(b.string(c));
    }
    let drop_frames = b.string(s.get(first.drop_frames)?);
    let keep_frames = b.string(s.get(first.keep_frames)?);
    let default_sample_type = b.string(s.get(first.default_sample_type)?);
    Ok(Profile {
        sample_type,
        sample: b.samples,
        mapping: b.mappings,
        location: b.locations,
        function: b.functions,
        string_table: b.strings,
        drop_frames,
        keep_frames,
        time_nanos: start,
        duration_nanos: end.saturating_sub(start).max(0),
        period_type,
        period: first.period,
        comment,
        default_sample_type,
    })
}

/// Sample types as (type, unit) strings: what must agree between parts.
fn sample_types(p: &Profile) -> Result<Vec<(String, String)>, ProfileError> {
    let s = Strings(&p.string_table);
    p.sample_type
        .iter()
        .map(|v| Ok((s.get(v.ty)?.to_string(), s.get(v.unit)?.to_string())))
        .collect()
}

/// A part's string table, read with a bounds check (the protobuf is data).
struct Strings<'a>(&'a [String]);

impl<'a> Strings<'a> {
    fn get(&self, index: i64) -> Result<&'a str, ProfileError> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.0.get(i))
            .map(String::as_str)
            .ok_or_else(|| bad(format!("string index {index} out of range")))
    }
}

fn bad(what: String) -> ProfileError {
    ProfileError::Failed(format!("cannot merge a malformed profile: {what}"))
}

type MappingKey = (u64, u64, u64, i64, i64, [bool; 4]);
type FunctionKey = (i64, i64, i64, i64);
type LocationKey = (u64, u64, Vec<(u64, i64)>, bool);

/// The merged tables, with the indexes that share equal entries.
#[derive(Default)]
struct Builder {
    strings: Vec<String>,
    string_index: HashMap<String, i64>,
    mappings: Vec<Mapping>,
    mapping_index: HashMap<MappingKey, u64>,
    functions: Vec<Function>,
    function_index: HashMap<FunctionKey, u64>,
    locations: Vec<Location>,
    location_index: HashMap<LocationKey, u64>,
    samples: Vec<Sample>,
}

impl Builder {
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.string_index.get(s) {
            return i;
        }
        let i = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_index.insert(s.to_string(), i);
        i
    }

    /// Adds one part: its tables first (old id -> new id), then its samples.
    fn add(&mut self, part: &Part<'_>) -> Result<(), ProfileError> {
        let p = part.profile;
        let s = Strings(&p.string_table);
        let mut mapping_ids = HashMap::new();
        for m in &p.mapping {
            let filename = self.string(s.get(m.filename)?);
            let build_id = self.string(s.get(m.build_id)?);
            let flags = [
                m.has_functions,
                m.has_filenames,
                m.has_line_numbers,
                m.has_inline_frames,
            ];
            let key = (
                m.memory_start,
                m.memory_limit,
                m.file_offset,
                filename,
                build_id,
                flags,
            );
            let id = intern(&mut self.mapping_index, &mut self.mappings, key, |id, _| {
                Mapping {
                    id,
                    filename,
                    build_id,
                    ..m.clone()
                }
            });
            mapping_ids.insert(m.id, id);
        }
        let mut function_ids = HashMap::new();
        for f in &p.function {
            let name = self.string(s.get(f.name)?);
            let system_name = self.string(s.get(f.system_name)?);
            let filename = self.string(s.get(f.filename)?);
            let key = (name, system_name, filename, f.start_line);
            let id = intern(
                &mut self.function_index,
                &mut self.functions,
                key,
                |id, _| Function {
                    id,
                    name,
                    system_name,
                    filename,
                    start_line: f.start_line,
                },
            );
            function_ids.insert(f.id, id);
        }
        let mut location_ids = HashMap::new();
        for l in &p.location {
            // 0 means "no mapping".
            let mapping_id = match l.mapping_id {
                0 => 0,
                m => *mapping_ids
                    .get(&m)
                    .ok_or_else(|| bad(format!("location {} names no mapping {m}", l.id)))?,
            };
            let mut lines = Vec::with_capacity(l.line.len());
            for line in &l.line {
                let f = *function_ids.get(&line.function_id).ok_or_else(|| {
                    bad(format!(
                        "location {} names no function {}",
                        l.id, line.function_id
                    ))
                })?;
                lines.push((f, line.line));
            }
            let key = (mapping_id, l.address, lines, l.is_folded);
            let id = intern(
                &mut self.location_index,
                &mut self.locations,
                key,
                |id, key| Location {
                    id,
                    mapping_id,
                    address: l.address,
                    line: key
                        .2
                        .iter()
                        .map(|&(function_id, line)| Line { function_id, line })
                        .collect(),
                    is_folded: l.is_folded,
                },
            );
            location_ids.insert(l.id, id);
        }
        let mut tags = Vec::with_capacity(part.tags.len());
        for tag in &part.tags {
            tags.push(match tag {
                Tag::Str(key, value) => Label {
                    key: self.string(key),
                    str: self.string(value),
                    ..Label::default()
                },
                Tag::Num(key, value, unit) => Label {
                    key: self.string(key),
                    num: *value,
                    num_unit: self.string(unit),
                    ..Label::default()
                },
            });
        }
        for sample in &p.sample {
            let location_id = sample
                .location_id
                .iter()
                .map(|old| {
                    location_ids
                        .get(old)
                        .copied()
                        .ok_or_else(|| bad(format!("a sample names no location {old}")))
                })
                .collect::<Result<Vec<u64>, _>>()?;
            let mut label = Vec::with_capacity(sample.label.len() + tags.len());
            for l in &sample.label {
                label.push(Label {
                    key: self.string(s.get(l.key)?),
                    str: self.string(s.get(l.str)?),
                    num: l.num,
                    num_unit: self.string(s.get(l.num_unit)?),
                });
            }
            label.extend(tags.iter().cloned());
            self.samples.push(Sample {
                location_id,
                value: sample.value.clone(),
                label,
            });
        }
        Ok(())
    }
}

/// The merged table's id for `key`: the one it already has, or the next
/// (ids start at 1), with the entry `make` builds from it pushed.
fn intern<K: std::hash::Hash + Eq, T>(
    index: &mut HashMap<K, u64>,
    table: &mut Vec<T>,
    key: K,
    make: impl FnOnce(u64, &K) -> T,
) -> u64 {
    match index.entry(key) {
        std::collections::hash_map::Entry::Occupied(e) => *e.get(),
        std::collections::hash_map::Entry::Vacant(e) => {
            let id = table.len() as u64 + 1;
            table.push(make(id, e.key()));
            e.insert(id);
            id
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A profile in pprof-rs's shape: one location per function, a
    /// `thread` label, strings in the order given.
    fn profile(stacks: &[(&[&str], i64)], time: i64) -> Profile {
        let mut strings = vec![
            String::new(),
            "samples".into(),
            "count".into(),
            "cpu".into(),
            "nanoseconds".into(),
            "thread".into(),
            "main".into(),
        ];
        let mut intern = |s: &str| match strings.iter().position(|x| x == s) {
            Some(i) => i as i64,
            None => {
                strings.push(s.into());
                strings.len() as i64 - 1
            }
        };
        let mut function = Vec::new();
        let mut location = Vec::new();
        let mut sample = Vec::new();
        for (frames, count) in stacks {
            let mut ids = Vec::new();
            for name in *frames {
                let n = intern(name);
                let id = match function.iter().position(|f: &Function| f.name == n) {
                    Some(i) => i as u64 + 1,
                    None => {
                        let id = function.len() as u64 + 1;
                        function.push(Function {
                            id,
                            name: n,
                            system_name: n,
                            ..Function::default()
                        });
                        location.push(Location {
                            id,
                            line: vec![Line {
                                function_id: id,
                                line: 7,
                            }],
                            ..Location::default()
                        });
                        id
                    }
                };
                ids.push(id);
            }
            sample.push(Sample {
                location_id: ids,
                value: vec![*count, *count * 10_101_010],
                label: vec![Label {
                    key: 5,
                    str: 6,
                    ..Label::default()
                }],
            });
        }
        let cpu = ValueType { ty: 3, unit: 4 };
        Profile {
            sample_type: vec![ValueType { ty: 1, unit: 2 }, cpu.clone()],
            sample,
            location,
            function,
            string_table: strings,
            time_nanos: time,
            duration_nanos: 1_000,
            period_type: Some(cpu),
            period: 10_101_010,
            ..Profile::default()
        }
    }

    /// Each sample as (stack of names, values, labels as "key=value").
    fn readable(p: &Profile) -> Vec<(Vec<String>, Vec<i64>, Vec<String>)> {
        let s = |i: i64| p.string_table[i as usize].clone();
        p.sample
            .iter()
            .map(|sample| {
                let names = sample
                    .location_id
                    .iter()
                    .map(|id| {
                        let l = p.location.iter().find(|l| l.id == *id).unwrap();
                        let f = p
                            .function
                            .iter()
                            .find(|f| f.id == l.line[0].function_id)
                            .unwrap();
                        s(f.name)
                    })
                    .collect();
                let labels = sample
                    .label
                    .iter()
                    .map(|l| match l.str {
                        0 => format!("{}={}", s(l.key), l.num),
                        v => format!("{}={}", s(l.key), s(v)),
                    })
                    .collect();
                (names, sample.value.clone(), labels)
            })
            .collect()
    }

    #[test]
    fn samples_keep_their_stacks_and_gain_their_process_labels() {
        let a = profile(&[(&["poll", "EventLoop::run"], 3), (&["main"], 1)], 100);
        let b = profile(&[(&["send", "EventLoop::run"], 5)], 400);
        let merged = merge(
            &[
                Part {
                    profile: &a,
                    tags: vec![Tag::Num("worker", 0, "index"), Tag::Num("pid", 11, "")],
                },
                Part {
                    profile: &b,
                    tags: vec![Tag::Str("host", "b".into()), Tag::Num("pid", 22, "")],
                },
            ],
            &["worker 2 (pid 33): did not answer".into()],
        )
        .unwrap();
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            readable(&merged),
            vec![
                (
                    l(&["poll", "EventLoop::run"]),
                    vec![3, 30_303_030],
                    l(&["thread=main", "worker=0", "pid=11"])
                ),
                (
                    l(&["main"]),
                    vec![1, 10_101_010],
                    l(&["thread=main", "worker=0", "pid=11"])
                ),
                (
                    l(&["send", "EventLoop::run"]),
                    vec![5, 50_505_050],
                    l(&["thread=main", "host=b", "pid=22"])
                ),
            ]
        );
        // worker 0 has a unit, so pprof's reader keeps the label.
        let worker = &merged.sample[0].label[1];
        assert_eq!(merged.string_table[worker.num_unit as usize], "index");
        // Equal functions are shared: poll, EventLoop::run, main, send.
        assert_eq!(merged.function.len(), 4);
        assert_eq!(merged.location.len(), 4);
        assert_eq!(merged.string_table[0], "");
        let unique: std::collections::HashSet<_> = merged.string_table.iter().collect();
        assert_eq!(unique.len(), merged.string_table.len(), "strings interned");
        assert_eq!((merged.time_nanos, merged.duration_nanos), (100, 1_300));
        let s = |i: i64| merged.string_table[i as usize].as_str();
        let types: Vec<_> = merged
            .sample_type
            .iter()
            .map(|v| (s(v.ty), s(v.unit)))
            .collect();
        assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
        assert_eq!(s(merged.period_type.as_ref().unwrap().ty), "cpu");
        assert_eq!(merged.period, 10_101_010);
        assert_eq!(s(merged.comment[0]), "worker 2 (pid 33): did not answer");
        // The result is a valid protobuf that decodes to itself.
        use pprof::protos::Message;
        let bytes = merged.encode_to_vec();
        assert_eq!(Profile::decode(&bytes[..]).unwrap(), merged);
    }

    #[test]
    fn refuses_different_sample_types_and_dangling_ids() {
        let a = profile(&[(&["main"], 1)], 0);
        let mut b = a.clone();
        b.string_table[3] = "wall".into();
        let parts = |b| {
            vec![
                Part {
                    profile: &a,
                    tags: vec![],
                },
                Part {
                    profile: b,
                    tags: vec![],
                },
            ]
        };
        let e = merge(&parts(&b), &[]).unwrap_err();
        assert!(e.to_string().contains("different sample types"), "{e}");
        let mut c = a.clone();
        c.sample[0].location_id = vec![99];
        let e = merge(&parts(&c), &[]).unwrap_err();
        assert!(e.to_string().contains("no location 99"), "{e}");
        let mut d = a.clone();
        d.function[0].name = 1000;
        let e = merge(&parts(&d), &[]).unwrap_err();
        assert!(e.to_string().contains("string index 1000"), "{e}");
        assert!(merge(&[], &[]).is_err());
    }
}
