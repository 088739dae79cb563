//! The CEFR framework for languages that ships in the binary: four modes of communication
//! (reception, production, interaction, mediation), each with the levels Pre-A1 … C2, and
//! two short can-do descriptors per mode and level, in English and French
//! (`assets/frameworks/cefr.json`). Every tenant has it from its first start.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Framework, FrameworkCompetency, FrameworkLevel, Relation, RelationKind, Text};

const SOURCE: &str = include_str!("../../assets/frameworks/cefr.json");

/// The URI of the built-in framework.
pub const URI: &str = "urn:ceredis:framework:cefr-languages";

/// The CEFR levels in order.
pub const LEVELS: [&str; 7] = ["Pre-A1", "A1", "A2", "B1", "B2", "C1", "C2"];

#[derive(Deserialize)]
struct File {
    uri: String,
    version: String,
    name: Text,
    description: Text,
    levels: Vec<FileLevel>,
    skills: Vec<FileSkill>,
}

#[derive(Deserialize)]
struct FileLevel {
    code: String,
    name: Text,
}

#[derive(Deserialize)]
struct FileSkill {
    code: String,
    name: Text,
    description: Text,
    descriptors: BTreeMap<String, Vec<Text>>,
}

/// The built-in framework, as a [`Framework`] ready to store.
pub fn framework() -> Result<Framework, serde_json::Error> {
    let file: File = serde_json::from_str(SOURCE)?;
    let mut competencies = Vec::new();
    let mut relations = Vec::new();
    for skill in &file.skills {
        let skill_uri = format!("urn:ceredis:cefr:{}", skill.code);
        competencies.push(FrameworkCompetency {
            uri: skill_uri.clone(),
            code: skill.code.clone(),
            name: skill.name.clone(),
            description: skill.description.clone(),
            level_code: None,
            levels: file
                .levels
                .iter()
                .map(|l| FrameworkLevel {
                    uri: format!("{skill_uri}:level:{}", l.code),
                    code: l.code.clone(),
                    name: l.name.clone(),
                    description: Text::default(),
                })
                .collect(),
        });
        for level in LEVELS {
            for (i, text) in skill
                .descriptors
                .get(level)
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let uri = format!("{skill_uri}:{level}:{}", i + 1);
                competencies.push(FrameworkCompetency {
                    uri: uri.clone(),
                    code: format!("{}.{level}.{}", skill.code, i + 1),
                    name: text.clone(),
                    description: Text::default(),
                    level_code: Some(level.to_string()),
                    levels: Vec::new(),
                });
                relations.push(Relation {
                    uri: None,
                    source: uri,
                    target: skill_uri.clone(),
                    kind: RelationKind::Narrows,
                });
            }
        }
    }
    Ok(Framework {
        uri: file.uri,
        version: file.version,
        name: file.name,
        description: file.description,
        source: "builtin".into(),
        competencies,
        relations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_has_every_level_and_two_descriptors_per_level() {
        let f = framework().unwrap();
        assert_eq!(f.uri, URI);
        let skills: Vec<_> = f
            .competencies
            .iter()
            .filter(|c| c.level_code.is_none())
            .collect();
        assert_eq!(
            skills.iter().map(|s| s.code.as_str()).collect::<Vec<_>>(),
            ["reception", "production", "interaction", "mediation"]
        );
        for s in &skills {
            let codes: Vec<_> = s.levels.iter().map(|l| l.code.as_str()).collect();
            assert_eq!(codes, LEVELS);
            for level in LEVELS {
                let n = f
                    .relations
                    .iter()
                    .filter(|r| r.target == s.uri)
                    .filter(|r| {
                        f.competencies
                            .iter()
                            .any(|c| c.uri == r.source && c.level_code.as_deref() == Some(level))
                    })
                    .count();
                assert_eq!(n, 2, "{} {level}", s.code);
            }
        }
        for c in &f.competencies {
            assert!(!c.name.en.is_empty() && !c.name.fr.is_empty(), "{}", c.uri);
        }
    }
}
