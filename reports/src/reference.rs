//! The seed document's claims, bundled from data/: its performance table and its
//! capacity-planning rules. Plotted and compared against, never taken as truth.

use serde::Deserialize;

const SEED_TABLE_CSV: &str = include_str!("../data/seed-table.csv");
const CAPACITY_RULES_CSV: &str = include_str!("../data/capacity-rules.csv");

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("bundled {file} is malformed: {source} (restore it from shared/reference/)")]
    Csv {
        file: &'static str,
        source: csv::Error,
    },
    #[error("bundled capacity-rules.csv has no rule {0:?} (restore it from shared/reference/)")]
    MissingRule(&'static str),
}

/// One row of the seed's performance table (16-core Xeon, 32 GB, Linux 5.4, as claimed).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SeedRow {
    pub connections: u64,
    pub rps: f64,
    pub avg_latency_ms: f64,
    /// Percent of the whole machine (all `cores`).
    pub cpu_percent: f64,
    pub memory_gb: f64,
    pub cores: u32,
    pub source: String,
}

impl SeedRow {
    /// Requests/s divided by every core of the machine.
    pub fn rps_per_core(&self) -> f64 {
        self.rps / f64::from(self.cores)
    }

    /// Cores busy on average, from the whole-machine CPU percent.
    pub fn cores_busy(&self) -> f64 {
        f64::from(self.cores) * self.cpu_percent / 100.0
    }

    /// Requests/s per core actually busy (same definition as the measured figure).
    pub fn rps_per_busy_core(&self) -> f64 {
        self.rps / self.cores_busy()
    }

    /// CPU in percent of one core (top-style), to sit on the measured axis.
    pub fn cpu_percent_of_one_core(&self) -> f64 {
        self.cores_busy() * 100.0
    }

    pub fn memory_bytes(&self) -> f64 {
        self.memory_gb * 1e9
    }
}

/// One capacity rule: a low..high range with its unit.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Rule {
    pub rule: String,
    pub low: f64,
    pub high: f64,
    pub unit: String,
    pub source: String,
}

/// The three rules the seed gives for capacity planning.
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityRules {
    /// requests/s per core
    pub rps_per_core: Rule,
    /// GB per 1M concurrent connections
    pub memory_per_million_connections: Rule,
    /// concurrent connections per instance
    pub connections_per_instance: Rule,
}

/// Reads rows of `n` named fields where the last one (`source`, free text) may itself
/// hold unquoted commas, as the seed's files do: fields past the n-th join back into it.
fn parse<T: for<'de> Deserialize<'de>>(
    file: &'static str,
    text: &str,
    n: usize,
) -> Result<Vec<T>, ReferenceError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|source| ReferenceError::Csv { file, source })?
        .clone();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|source| ReferenceError::Csv { file, source })?;
        let mut fields: Vec<String> = record.iter().take(n - 1).map(str::to_owned).collect();
        fields.push(record.iter().skip(n - 1).collect::<Vec<_>>().join(","));
        let joined = csv::StringRecord::from(fields);
        rows.push(
            joined
                .deserialize(Some(&headers))
                .map_err(|source| ReferenceError::Csv { file, source })?,
        );
    }
    Ok(rows)
}

pub fn seed_table() -> Result<Vec<SeedRow>, ReferenceError> {
    parse("seed-table.csv", SEED_TABLE_CSV, 7)
}

pub fn capacity_rules() -> Result<CapacityRules, ReferenceError> {
    let rules: Vec<Rule> = parse("capacity-rules.csv", CAPACITY_RULES_CSV, 5)?;
    let take = |name: &'static str| {
        rules
            .iter()
            .find(|r| r.rule == name)
            .cloned()
            .ok_or(ReferenceError::MissingRule(name))
    };
    Ok(CapacityRules {
        rps_per_core: take("rps_per_core")?,
        memory_per_million_connections: take("memory_per_million_connections")?,
        connections_per_instance: take("connections_per_instance")?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn seed_table_reads_with_commas_in_source() {
        let rows = super::seed_table().unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2].connections, 10_000_000);
        assert_eq!(rows[2].rps, 80_000.0);
        assert!(rows[0].source.contains("16-core Xeon, 32 GB"));
    }

    #[test]
    fn capacity_rules_read() {
        let r = super::capacity_rules().unwrap();
        assert_eq!(
            (r.rps_per_core.low, r.rps_per_core.high),
            (10_000.0, 20_000.0)
        );
        let m = r.memory_per_million_connections;
        assert_eq!((m.low, m.high), (2.0, 4.0));
    }
}
