//! The OpenAPI 3.1 document of `/admin/v1`, written by hand and checked
//! against the router's route list by a test (so neither can drift).

/// The document served at `/admin/v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    #[test]
    fn document_matches_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI_JSON).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented = BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for method in ops.as_object().unwrap().keys() {
                documented.insert((method.clone(), path.clone()));
            }
        }
        let served: BTreeSet<(String, String)> = crate::api::ROUTES
            .iter()
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        assert_eq!(documented, served);
        // Every $ref resolves.
        let text = super::OPENAPI_JSON;
        for part in text.split("\"$ref\": \"#/components/").skip(1) {
            let name = part.split('"').next().unwrap();
            let (section, item) = name.split_once('/').unwrap();
            assert!(doc["components"][section][item].is_object(), "{name}");
        }
    }
}
