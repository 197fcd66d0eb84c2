/*!
Line location: how a node of the document is found again in the text, and how serde's
messages are made fit to show. See the [module documentation](super) for why this is
done through the real parser.

- [`Nav`] walks a path of [`Seg`]s from the root, skipping every other node, and
  deserializes the node at the end straight from the text, so errors carry its position.
- [`NodeProbe`] (and `Nav`'s key probe) fail on purpose at a node or key with the
  [`PROBE`] marker; the position serde_yaml attaches to that error is the line.
- [`clean_message`] strips positions and every quoted value from serde's messages:
  values may be secrets.
*/

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// One step from a node to a child.
#[derive(Clone, Copy, Debug)]
pub(super) enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// The marker of a probe error. Not something a document can produce by accident.
pub(super) const PROBE: &str = "\u{1}authproxy-yaml-probe\u{1}";

/// Walks `path` from the node it is given, skipping everything else, and runs `leaf` on
/// the node at the end. With `key_probe`, fails with [`PROBE`] at the last key instead.
pub(super) struct Nav<'p, S> {
    pub(super) path: &'p [Seg<'p>],
    pub(super) leaf: S,
    pub(super) key_probe: bool,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Nav<'_, S> {
    type Value = Option<S::Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        match self.path.split_first() {
            None => self.leaf.deserialize(d).map(Some),
            Some((Seg::Key(key), rest)) => d.deserialize_map(MapNav {
                key,
                rest,
                leaf: self.leaf,
                key_probe: self.key_probe,
            }),
            Some((Seg::Index(index), rest)) => d.deserialize_seq(SeqNav {
                index: *index,
                rest,
                leaf: self.leaf,
                key_probe: self.key_probe,
            }),
        }
    }
}

struct MapNav<'p, S> {
    key: &'p str,
    rest: &'p [Seg<'p>],
    leaf: S,
    key_probe: bool,
}

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for MapNav<'_, S> {
    type Value = Option<S::Value>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let fail_at_key = self.key_probe && self.rest.is_empty();
        let mut leaf = Some(self.leaf);
        let mut found = None;
        while let Some(is_target) = map.next_key_seed(KeySeed {
            target: self.key,
            fail: fail_at_key,
        })? {
            match leaf.take() {
                Some(l) if is_target => {
                    found = map.next_value_seed(Nav {
                        path: self.rest,
                        leaf: l,
                        key_probe: self.key_probe,
                    })?;
                }
                other => {
                    leaf = other;
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }
}

struct SeqNav<'p, S> {
    index: usize,
    rest: &'p [Seg<'p>],
    leaf: S,
    key_probe: bool,
}

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for SeqNav<'_, S> {
    type Value = Option<S::Value>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut leaf = Some(self.leaf);
        let mut found = None;
        let mut i = 0usize;
        loop {
            match leaf.take() {
                Some(l) if i == self.index => {
                    let nav = Nav {
                        path: self.rest,
                        leaf: l,
                        key_probe: self.key_probe,
                    };
                    match seq.next_element_seed(nav)? {
                        Some(v) => found = v,
                        None => break,
                    }
                }
                other => {
                    leaf = other;
                    if seq.next_element::<IgnoredAny>()?.is_none() {
                        break;
                    }
                }
            }
            i = i.saturating_add(1);
        }
        Ok(found)
    }
}

/// Deserializes a map key; `true` if it is `target`. With `fail`, the target key fails
/// with [`PROBE`] instead, so the error carries the key's position.
struct KeySeed<'p> {
    target: &'p str,
    fail: bool,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        match (v == self.target, self.fail) {
            (true, true) => Err(E::custom(PROBE)),
            (is, _) => Ok(is),
        }
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        IgnoredAny::deserialize(d).map(|_| false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<bool, A::Error> {
        IgnoredAny.visit_enum(data).map(|_| false)
    }
}

/// Fails with [`PROBE`] on whatever node it is given, inside that node's own
/// deserialization, so serde_yaml attaches the node's position.
pub(super) struct NodeProbe;

impl<'de> DeserializeSeed<'de> for NodeProbe {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeProbe {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Any "invalid type" error serde builds for a visit method not written out
        // below quotes this, so it is recognised as a probe as well.
        f.write_str(PROBE)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(PROBE))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(PROBE))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(PROBE))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(PROBE))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(PROBE))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(PROBE))
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(PROBE))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(PROBE))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(PROBE))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(PROBE))
    }
}

// --- Error text ----------------------------------------------------------------

/// Removes serde_yaml's ` at line L column C` / ` at position N` (the line is reported
/// separately) and every quoted value; see the module documentation.
pub(super) fn clean_message(msg: &str) -> String {
    sanitize(&strip_positions(msg))
}

fn strip_positions(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find(" at ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 4..];
        if let Some(skip) = position_len(after) {
            rest = &after[skip..];
        } else {
            out.push_str(" at ");
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Length of `line N column M` or `position N` at the start of `s`.
fn position_len(s: &str) -> Option<usize> {
    fn digits(s: &str) -> usize {
        s.bytes().take_while(u8::is_ascii_digit).count()
    }
    if let Some(r) = s.strip_prefix("line ") {
        let d1 = digits(r);
        let r2 = r[d1..].strip_prefix(" column ")?;
        let d2 = digits(r2);
        (d1 > 0 && d2 > 0).then_some(5 + d1 + 8 + d2)
    } else if let Some(r) = s.strip_prefix("position ") {
        let d = digits(r);
        (d > 0).then_some(9 + d)
    } else {
        None
    }
}

/// Drops quoted values from a serde message: every `"..."`, and every `` `...` `` except
/// a field name (`field `x``) or what follows `, expected` (the schema's own names).
fn sanitize(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut in_expected = false;
    let mut i = 0;
    while let Some(c) = msg[i..].chars().next() {
        if msg[i..].starts_with(", expected ") {
            in_expected = true;
        }
        match c {
            '"' => {
                let mut end = msg.len();
                let mut escaped = false;
                for (k, ch) in msg[i + 1..].char_indices() {
                    if escaped {
                        escaped = false;
                    } else if ch == '\\' {
                        escaped = true;
                    } else if ch == '"' {
                        end = i + 1 + k + 1;
                        break;
                    }
                }
                if out.ends_with("with key ") {
                    // serde_yaml's duplicate-key message: a key, not a value.
                    out.push_str(&msg[i..end]);
                } else {
                    trim_trailing_space(&mut out);
                }
                i = end;
            }
            '`' => {
                let end = msg[i + 1..].find('`').map_or(msg.len(), |k| i + 1 + k + 1);
                if in_expected || out.ends_with("field ") {
                    out.push_str(&msg[i..end]);
                } else {
                    trim_trailing_space(&mut out);
                }
                i = end;
            }
            _ => {
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

fn trim_trailing_space(s: &mut String) {
    while s.ends_with(' ') {
        s.pop();
    }
}

/// A key for a message: escaped and shortened.
pub(super) fn show_key(k: &str) -> String {
    let mut s: String = k.chars().take(64).collect();
    if s.len() < k.len() {
        s.push('…');
    }
    s.escape_debug().to_string()
}

pub(super) fn site_path<'a>(i: usize, keys: &[&'a str]) -> Vec<Seg<'a>> {
    let mut v = vec![Seg::Key("sites"), Seg::Index(i)];
    v.extend(keys.iter().map(|k| Seg::Key(k)));
    v
}

/// `sites[0].basic.password_file` for messages.
pub(super) fn option_name(path: &[Seg<'_>]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(&show_key(k));
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizer_keeps_field_names_and_drops_values() {
        assert_eq!(
            sanitize("sites[0].basic: unknown field `pasword_file`, expected one of `username`, `password`"),
            "sites[0].basic: unknown field `pasword_file`, expected one of `username`, `password`"
        );
        assert_eq!(
            sanitize("listen: invalid type: string \"hunter2 \\\" x\", expected a sequence"),
            "listen: invalid type: string, expected a sequence"
        );
        assert_eq!(
            sanitize("unknown variant `hunter2`, expected `pass` or `follow`"),
            "unknown variant, expected `pass` or `follow`"
        );
        assert_eq!(
            sanitize("invalid value: integer `1234`, expected u8"),
            "invalid value: integer, expected u8"
        );
        assert_eq!(sanitize("missing field `match`"), "missing field `match`");
        assert_eq!(
            sanitize("duplicate entry with key \"a\""),
            "duplicate entry with key \"a\""
        );
        assert_eq!(
            sanitize("invalid type: string \"x\", expected a site"),
            "invalid type: string, expected a site"
        );
        assert_eq!(sanitize("unterminated \"abc"), "unterminated");
        assert_eq!(
            strip_positions("x: bad at line 3 column 7, while parsing at position 12 at home"),
            "x: bad, while parsing at home"
        );
    }
}
