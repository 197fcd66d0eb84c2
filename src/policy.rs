/*!
One request hop's policy: which rules apply to the URL being fetched, decided once.

A request may take several hops (a redirect followed inside, a 401 answered). Each hop
matches the snapshot's rules once, in [`HopPolicy::new`], and keeps the result (rule
positions in the snapshot it was made on, which the hop holds) in the request context;
every pingora phase of that hop asks [`HopPolicy::rules`] instead of matching again. A
reload during the request does not change it: the hop keeps its snapshot.
*/

use std::sync::Arc;

use crate::config::snapshot::{Resolved, Selection};
use crate::config::Snapshot;
use crate::target::Target;

/// The rules of one hop, and where it goes.
#[derive(Clone, Debug)]
pub struct HopPolicy {
    snapshot: Arc<Snapshot>,
    selection: Selection,
    /// The URL the rules matched: the client's, or a followed redirect's.
    pub hop: Target,
    /// Where the request goes: `hop`, upgraded to https when a rule says so.
    pub upstream: Target,
}

impl HopPolicy {
    pub fn new(snapshot: Arc<Snapshot>, hop: Target) -> Self {
        let selection = snapshot.select(&hop);
        let upstream = snapshot
            .resolved(&selection)
            .upstream_target(&hop)
            .unwrap_or_else(|| hop.clone());
        HopPolicy {
            snapshot,
            selection,
            hop,
            upstream,
        }
    }

    /// The policy of the next hop (a followed redirect), on the same snapshot.
    pub fn next(&self, hop: Target) -> HopPolicy {
        HopPolicy::new(self.snapshot.clone(), hop)
    }

    /// The rules of this hop, without matching again.
    pub fn rules(&self) -> Resolved<'_> {
        self.snapshot.resolved(&self.selection)
    }

    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::{load, Environment};

    #[test]
    fn a_hop_answers_as_a_fresh_resolve_would() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        std::fs::write(
            h.join(".daprc"),
            "[a.example:8080]HTTP.CREDENTIALS.USERPASSWORD=a:1\n",
        )
        .unwrap();
        let netrc = h.join(".netrc");
        std::fs::write(&netrc, "machine b.example login b password 2\n").unwrap();
        let config = h.join("config.yaml");
        std::fs::write(
            &config,
            "sites:\n  - match: b.example\n    tls: { upgrade: true }\n",
        )
        .unwrap();
        let snap = Arc::new(load(&Environment::isolated(h, Some(&config))).unwrap());
        for url in [
            "http://a.example:8080/x",
            "http://b.example/y",
            "https://b.example/z",
            "http://c.example/",
        ] {
            let t = Target::from_absolute(url.as_bytes()).unwrap();
            let p = HopPolicy::new(snap.clone(), t.clone());
            let fresh = snap.resolve(&t);
            assert_eq!(
                p.rules().basic().map(|b| b.user),
                fresh.basic().map(|b| b.user),
                "{url}"
            );
            assert_eq!(
                p.rules().challenge_basic(&p.upstream).map(|b| b.user),
                fresh.challenge_basic(&p.upstream).map(|b| b.user),
                "{url}"
            );
            assert_eq!(p.rules().describe(), fresh.describe(), "{url}");
        }
        let p = HopPolicy::new(
            snap.clone(),
            Target::from_absolute(b"http://b.example/y").unwrap(),
        );
        assert_eq!(p.upstream.scheme, crate::target::Scheme::Https);
        assert_eq!(
            p.rules().challenge_basic(&p.upstream).map(|b| b.user),
            Some("b")
        );
        let next = p.next(Target::from_absolute(b"http://a.example:8080/x").unwrap());
        assert_eq!(next.rules().basic().map(|b| b.user), Some("a"));
    }
}
