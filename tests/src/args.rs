//! A tiny command-line parser for the helper binaries: `--name value` options
//! and declared `--flag`s. Every option must be consumed; leftovers are an
//! error, so a typo in a test's arguments fails loudly.

use std::{collections::BTreeMap, str::FromStr};

/// Parsed options, consumed by the getters.
#[derive(Debug, Default)]
pub struct Args {
    values: BTreeMap<String, String>,
    flags: Vec<String>,
}

impl Args {
    /// Parses `args`; names in `flags` take no value.
    ///
    /// # Errors
    ///
    /// A positional argument, a repeated option, or an option without value.
    pub fn parse(args: impl IntoIterator<Item = String>, flags: &[&str]) -> Result<Self, String> {
        let mut out = Self::default();
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let Some(name) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?}"));
            };
            if flags.contains(&name) {
                out.flags.push(name.to_string());
                continue;
            }
            let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            if out.values.insert(name.to_string(), value).is_some() {
                return Err(format!("--{name} given twice"));
            }
        }
        Ok(out)
    }

    /// Takes an optional value.
    ///
    /// # Errors
    ///
    /// A value that does not parse as `T`.
    pub fn opt<T: FromStr>(&mut self, name: &str) -> Result<Option<T>, String> {
        match self.values.remove(name) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("--{name} {v:?} is not valid")),
        }
    }

    /// Takes a value, or `default`.
    ///
    /// # Errors
    ///
    /// As [`Self::opt`].
    pub fn or<T: FromStr>(&mut self, name: &str, default: T) -> Result<T, String> {
        Ok(self.opt(name)?.unwrap_or(default))
    }

    /// Takes a required value.
    ///
    /// # Errors
    ///
    /// Missing, or as [`Self::opt`].
    pub fn req<T: FromStr>(&mut self, name: &str) -> Result<T, String> {
        self.opt(name)?
            .ok_or_else(|| format!("--{name} is required"))
    }

    /// Takes a flag: true if given.
    pub fn flag(&mut self, name: &str) -> bool {
        let before = self.flags.len();
        self.flags.retain(|f| f != name);
        self.flags.len() != before
    }

    /// Fails if any option was not consumed.
    ///
    /// # Errors
    ///
    /// The unknown options.
    pub fn finish(self) -> Result<(), String> {
        let left: Vec<String> = self
            .values
            .keys()
            .chain(self.flags.iter())
            .map(|k| format!("--{k}"))
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("unknown options: {}", left.join(" ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args, String> {
        Args::parse(s.split_whitespace().map(String::from), &["loan"])
    }

    #[test]
    fn options_flags_and_leftovers() {
        let mut a = parse("--count 5 --loan --topic t").unwrap();
        assert_eq!(a.req::<u64>("count").unwrap(), 5);
        assert!(a.flag("loan"));
        assert!(!a.flag("loan"));
        assert_eq!(a.or("size", 7usize).unwrap(), 7);
        assert!(a.opt::<u64>("topic").is_err());
        a.finish().unwrap();
        assert!(parse("--count").is_err());
        assert!(parse("x").is_err());
        assert!(parse("--a 1 --a 2").is_err());
        let mut a = parse("--zzz 1").unwrap();
        assert!(a.req::<u32>("count").is_err());
        assert!(a.finish().is_err());
    }
}
