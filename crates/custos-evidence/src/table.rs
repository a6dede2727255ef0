//! A table of the pack: one shape written three ways (JSON, CSV, HTML),
//! so the formats can never disagree.

use serde_json::{Map, Value};

/// One table: a file stem, a title, column names and rows of JSON scalars
/// (strings, numbers, booleans or null), each row as long as `columns`.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// File stem under `tables/`, such as `key-inventory`.
    pub name: &'static str,
    /// Human title, such as "Key inventory".
    pub title: &'static str,
    /// What the table shows, in one or two sentences.
    pub description: String,
    /// Column names (`snake_case`), the JSON object keys.
    pub columns: Vec<&'static str>,
    /// The rows.
    pub rows: Vec<Vec<Value>>,
}

impl Table {
    /// An empty table.
    #[must_use]
    pub fn new(
        name: &'static str,
        title: &'static str,
        description: impl Into<String>,
        columns: &[&'static str],
    ) -> Self {
        Table {
            name,
            title,
            description: description.into(),
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells become null, extra ones are dropped.
    pub fn push(&mut self, mut row: Vec<Value>) {
        row.resize(self.columns.len(), Value::Null);
        self.rows.push(row);
    }

    /// The index of column `name`.
    #[must_use]
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| *c == name)
    }

    /// The JSON form: an array of objects keyed by column, pretty-printed.
    #[must_use]
    pub fn to_json(&self) -> String {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                let obj: Map<String, Value> = self
                    .columns
                    .iter()
                    .zip(row)
                    .map(|(c, v)| ((*c).to_owned(), v.clone()))
                    .collect();
                Value::Object(obj)
            })
            .collect();
        let mut text = serde_json::to_string_pretty(&Value::Array(rows)).unwrap_or_default();
        text.push('\n');
        text
    }

    /// The CSV form (RFC 4180): a header line, CRLF line ends, fields
    /// quoted when they contain a comma, quote or line break; null is empty.
    #[must_use]
    pub fn to_csv(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, cells: &mut dyn Iterator<Item = String>| {
            let fields: Vec<String> = cells.map(|c| csv_field(&c)).collect();
            out.push_str(&fields.join(","));
            out.push_str("\r\n");
        };
        line(&mut out, &mut self.columns.iter().map(|c| (*c).to_owned()));
        for row in &self.rows {
            line(&mut out, &mut row.iter().map(cell_text));
        }
        out
    }
}

/// A cell as plain text: strings unquoted, null empty.
#[must_use]
pub fn cell_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn csv_field(s: &str) -> String {
    // A leading = + - @ makes spreadsheets evaluate the cell; a quote
    // prefix keeps it text (OWASP CSV injection advice).
    let s = if s.starts_with(['=', '+', '@']) || (s.starts_with('-') && s.parse::<f64>().is_err()) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csv_quotes_and_defuses() {
        let mut t = Table::new("t", "T", "", &["a", "b", "c"]);
        t.push(vec![json!("x,y"), json!("say \"hi\""), json!(null)]);
        t.push(vec![json!("=SUM(A1)"), json!(-3), json!(true)]);
        assert_eq!(
            t.to_csv(),
            "a,b,c\r\n\"x,y\",\"say \"\"hi\"\"\",\r\n'=SUM(A1),-3,true\r\n"
        );
        let parsed: Value = serde_json::from_str(&t.to_json()).unwrap();
        assert_eq!(parsed[1]["b"], json!(-3));
        assert_eq!(parsed[0]["c"], json!(null));
    }
}
