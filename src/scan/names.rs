//! Temp-like file names (CONTRACT §5): files a remitter's tool is still writing
//! or that the OS drops beside real files. They are never touched.

/// One rule of the ignore list: `prefix*`, `*suffix` or an exact name,
/// all compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    Prefix(String),
    Suffix(String),
    Exact(String),
}

/// The configurable list of temp-like name patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TempNameFilter {
    rules: Vec<Rule>,
}

/// The default patterns of CONTRACT §5, in the syntax `IGNORE_NAME_PATTERNS` accepts.
pub const DEFAULT_PATTERNS: &str = "~$*,.~lock.*,._*,.*,*.tmp,*.temp,*.part,*.partial,\
*.crdownload,*.download,*.filepart,*.swp,*~,Thumbs.db,desktop.ini";

/// A pattern that is neither `prefix*`, `*suffix` nor a plain name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid name pattern {0:?}: use `prefix*`, `*suffix` or an exact name")]
pub struct PatternError(pub String);

impl TempNameFilter {
    /// Parses a comma-separated pattern list (`prefix*`, `*suffix`, `exact`).
    pub fn parse(list: &str) -> Result<Self, PatternError> {
        let mut rules = Vec::new();
        for raw in list.split(',') {
            let p = raw.trim();
            if p.is_empty() {
                continue;
            }
            let stars = p.matches('*').count();
            let rule = match (stars, p.strip_suffix('*'), p.strip_prefix('*')) {
                (0, _, _) => Rule::Exact(p.to_lowercase()),
                (1, Some(pre), _) if !pre.is_empty() => Rule::Prefix(pre.to_lowercase()),
                (1, _, Some(suf)) if !suf.is_empty() => Rule::Suffix(suf.to_lowercase()),
                _ => return Err(PatternError(p.to_string())),
            };
            rules.push(rule);
        }
        Ok(Self { rules })
    }

    /// True when `name` (a bare file name) is temp-like and must be ignored.
    pub fn is_temp(&self, name: &str) -> bool {
        let lower = name.to_lowercase();
        self.rules.iter().any(|r| match r {
            Rule::Prefix(p) => lower.starts_with(p.as_str()),
            Rule::Suffix(s) => lower.ends_with(s.as_str()),
            Rule::Exact(e) => lower == *e,
        })
    }
}

impl Default for TempNameFilter {
    fn default() -> Self {
        // The default list is a constant known to parse.
        Self::parse(DEFAULT_PATTERNS).unwrap_or(Self { rules: Vec::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_list_parses_whole() {
        assert_eq!(
            TempNameFilter::parse(DEFAULT_PATTERNS).unwrap().rules.len(),
            15
        );
    }

    #[test]
    fn temp_names_table() {
        let f = TempNameFilter::default();
        let cases: &[(&str, bool)] = &[
            ("~$report.xlsx", true),
            (".~lock.report.xlsx#", true),
            ("._report.xlsx", true),
            (".hidden", true),
            ("report.tmp", true),
            ("REPORT.TMP", true),
            ("report.temp", true),
            ("report.part", true),
            ("report.partial", true),
            ("report.crdownload", true),
            ("report.download", true),
            ("report.filepart", true),
            ("report.swp", true),
            ("report.xlsx~", true),
            ("Thumbs.db", true),
            ("thumbs.DB", true),
            ("desktop.ini", true),
            ("DESKTOP.INI", true),
            ("report.xlsx", false),
            ("remit_20240101.xlsx", false),
            ("report.tmp.xlsx", false),
            ("my~file.csv", false),
            ("partial.csv", false),
            ("Thumbs.db.csv", false),
        ];
        for (name, want) in cases {
            assert_eq!(f.is_temp(name), *want, "{name}");
        }
    }

    #[test]
    fn custom_lists_and_bad_patterns() {
        let f = TempNameFilter::parse(" *.bak , lock* ,README ").unwrap();
        assert!(f.is_temp("a.BAK"));
        assert!(f.is_temp("lockfile"));
        assert!(f.is_temp("readme"));
        assert!(!f.is_temp("a.tmp"));
        assert_eq!(
            TempNameFilter::parse("a*b*").unwrap_err(),
            PatternError("a*b*".into())
        );
        assert!(TempNameFilter::parse("*").is_err());
        assert!(TempNameFilter::parse("a*b").is_err());
    }
}
