/*!
What a configuration source says about itself: one type for the errors and warnings of
the YAML file, the rc files and `.netrc`.

A [`Diagnostic`] is keyed by where it is (file and line; line 0 for the file as a whole),
so that `check` prints each finding once, in file:line order, whatever source produced
it. Its message never holds a configured value: values may be secrets.
*/

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use crate::config::Origin;

/// One finding about a configuration file. Whether it is an error or a warning is said
/// by the list it is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file and line; line 0 when it concerns the whole file.
    pub origin: Origin,
    /// The rule it concerns (`sites[2]`, an rc scope such as `[host:port]`), when it
    /// concerns one: findings are ordered by file, line, then rule.
    pub rule: Option<Arc<str>>,
    /// One sentence; never a configured value.
    pub message: String,
}

impl Diagnostic {
    pub fn new(origin: Origin, message: impl Into<String>) -> Self {
        Diagnostic {
            origin,
            rule: None,
            message: message.into(),
        }
    }

    /// The same finding, about `rule`.
    pub fn for_rule(mut self, rule: impl Into<Arc<str>>) -> Self {
        self.rule = Some(rule.into());
        self
    }

    /// About a file as a whole.
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        Diagnostic::new(Origin::new(path, 0), message)
    }

    /// Orders by file, then line; removes exact repeats (a line inherited by several
    /// rules is reported by each of them).
    pub fn sort_and_dedup(list: &mut Vec<Diagnostic>) {
        list.sort_by(|a, b| {
            (&*a.origin.path, a.origin.line, &a.rule).cmp(&(
                &*b.origin.path,
                b.origin.line,
                &b.rule,
            ))
        });
        let mut seen = std::collections::HashSet::new();
        list.retain(|d| seen.insert((d.origin.clone(), d.message.clone())));
    }
}

/// `path:line: message`, or `path: message` for the file as a whole.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.origin.line == 0 {
            write!(f, "{}: {}", self.origin.path.display(), self.message)
        } else {
            write!(f, "{}: {}", self.origin, self.message)
        }
    }
}

impl std::error::Error for Diagnostic {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_by_file_and_line_once_each() {
        let d = |p: &str, l: usize, m: &str| Diagnostic::new(Origin::new(p, l), m);
        let mut list = vec![
            d("/b", 1, "x"),
            d("/a", 10, "y"),
            d("/a", 2, "z"),
            d("/a", 10, "y"),
            d("/a", 0, "file"),
        ];
        Diagnostic::sort_and_dedup(&mut list);
        let shown: Vec<String> = list.iter().map(|d| d.to_string()).collect();
        assert_eq!(shown, ["/a: file", "/a:2: z", "/a:10: y", "/b:1: x"]);
    }
}
