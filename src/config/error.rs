//! Configuration errors, and turning byte spans of the file into
//! file:line:column positions.

use std::ops::Range;
use std::path::Path;

use toml::Spanned;

/// Why a configuration was rejected. Displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read the configuration: {err}")]
    Read { file: String, err: std::io::Error },
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
}

impl ConfigError {
    /// The problem without the file position (for tests and logs).
    pub fn message(&self) -> String {
        match self {
            ConfigError::Read { err, .. } => err.to_string(),
            ConfigError::Invalid { message, .. } => message.clone(),
        }
    }
    /// The 1-based line the problem was found on (0 when unknown).
    pub fn line(&self) -> usize {
        match self {
            ConfigError::Read { .. } => 0,
            ConfigError::Invalid { line, .. } => *line,
        }
    }
}

/// Turns byte spans into file:line:column errors.
pub(super) struct Source<'a> {
    pub file: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    pub fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        let offset = span.map_or(0, |s| s.start.min(self.text.len()));
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        // One line, whatever the parser said.
        let message: String = message.into();
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        ConfigError::Invalid {
            file: self.file.display().to_string(),
            line,
            column,
            message,
        }
    }

    pub fn at<T>(&self, v: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        self.error(Some(v.span()), message)
    }

    /// A TOML syntax or type error, with the key its value belongs to
    /// (the parser's message does not say which key a bad value is for:
    /// it is named from the text at the error's position).
    pub fn syntax(&self, e: &toml::de::Error) -> ConfigError {
        let message = match e.span().and_then(|s| key_at(self.text, s.start)) {
            Some(key)
                if !e
                    .message()
                    .contains(&format!("`{}`", key.rsplit('.').next().unwrap_or(&key))) =>
            {
                format!("{key}: {}", e.message())
            }
            _ => e.message().to_string(),
        };
        self.error(e.span(), message)
    }
}

/// The dotted key (`listener.port`) whose value is at `offset`, when the
/// line there is `key = value` (arrays spanning lines are followed back to
/// their key).
fn key_at(text: &str, offset: usize) -> Option<String> {
    let mut table = None;
    let mut key = None;
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') {
            table = Some(t.trim_matches(|c| c == '[' || c == ']').trim().to_string());
            key = None;
        } else if let Some((k, _)) = t.split_once('=')
            && !t.starts_with('#')
            && !t.starts_with('"')
            && !k.trim().is_empty()
        {
            key = Some(k.trim().to_string());
        }
        line_start += line.len();
        if line_start > offset {
            break;
        }
    }
    let key = key?;
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key,
    })
}
