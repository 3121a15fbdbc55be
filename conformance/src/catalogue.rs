//! The case catalogue: every `cases/*.json`, embedded at build time, each a
//! transcript with a stable ID, the rule it checks, its level and tier.

use crate::transcript::{Transcript, TranscriptError};

include!(concat!(env!("OUT_DIR"), "/cases.rs"));

/// A case file that does not load.
#[derive(Debug, thiserror::Error)]
#[error("case file {file}: {source}")]
pub struct CatalogueError {
    pub file: String,
    #[source]
    pub source: TranscriptError,
}

/// Every case, sorted by ID.
pub fn all() -> Result<Vec<Transcript>, CatalogueError> {
    let mut cases = CASES
        .iter()
        .map(|(file, text)| {
            Transcript::from_json(text).map_err(|source| CatalogueError {
                file: (*file).to_owned(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    cases.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    #[test]
    fn every_case_loads_with_a_unique_id_and_a_spec_reference() {
        let cases = super::all().unwrap();
        let ids: BTreeSet<_> = cases.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids.len(), cases.len(), "duplicate case IDs");
        for case in &cases {
            assert!(
                case.spec.starts_with("protocol.md §"),
                "{}: spec {:?}",
                case.id,
                case.spec
            );
            assert!(!case.events.is_empty(), "{}: no events", case.id);
        }
    }
}
