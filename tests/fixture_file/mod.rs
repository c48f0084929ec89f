//! The reference fixtures' JSON format (benchmark workload, sections 9 and 11): arrays by
//! key with their shapes, and metadata. Shared by the tests that replay them.

use std::collections::BTreeMap;

use ndarray::ArrayD;
use serde_json::Value;
use tapegrad::Variables;

pub struct Fixture {
    arrays: BTreeMap<String, ArrayD<f64>>,
    meta: Value,
}

fn flatten(value: &Value, out: &mut Vec<f64>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        Value::Number(n) => out.push(n.as_f64().expect("a number")),
        other => panic!("unexpected {other}"),
    }
}

pub fn load(name: &str) -> Fixture {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut arrays = BTreeMap::new();
    for (key, entry) in json["arrays"].as_object().unwrap() {
        let shape: Vec<usize> = entry["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let mut data = Vec::new();
        flatten(&entry["data"], &mut data);
        arrays.insert(key.clone(), ArrayD::from_shape_vec(shape, data).unwrap());
    }
    Fixture {
        arrays,
        meta: json["meta"].clone(),
    }
}

impl Fixture {
    /// The number of training steps recorded (first-order fixtures).
    pub fn steps(&self) -> usize {
        self.meta["steps"].as_u64().expect("meta.steps") as usize
    }

    /// A number of the metadata, at a `/`-separated path.
    pub fn meta_number(&self, path: &str) -> f64 {
        let mut value = &self.meta;
        for key in path.split('/') {
            value = &value[key];
        }
        value
            .as_f64()
            .unwrap_or_else(|| panic!("meta has no number at {path}"))
    }

    pub fn get(&self, key: &str) -> &ArrayD<f64> {
        self.arrays
            .get(key)
            .unwrap_or_else(|| panic!("fixture has no {key}"))
    }

    pub fn labels(&self) -> Vec<usize> {
        self.get("inputs/labels")
            .iter()
            .map(|&v| v as usize)
            .collect()
    }

    /// The initial variables: every `params/`, `batch_stats/` and `state/` array.
    pub fn variables(&self) -> Variables<f64> {
        let mut vars = Variables::new();
        for (key, value) in &self.arrays {
            if let Some((collection, path)) = key.split_once('/')
                && ["params", "batch_stats", "state"].contains(&collection)
            {
                vars.insert(collection, path, value.clone()).unwrap();
            }
        }
        vars
    }

    /// Asserts `actual` matches the recorded `key` to 1e-10, scaled.
    pub fn check(&self, key: &str, actual: &ArrayD<f64>) {
        let expected = self.get(key);
        assert_eq!(actual.shape(), expected.shape(), "{key}");
        let scale = expected.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let worst = actual
            .iter()
            .zip(expected)
            .fold(0.0f64, |m, (a, e)| m.max((a - e).abs()));
        assert!(worst <= 1e-10 * scale, "{key}: worst difference {worst:e}");
    }
}
