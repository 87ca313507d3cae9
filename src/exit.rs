//! Exit codes, decided here and only here (documented in README.md):
//! 0 ok · 1 runtime failure · 2 usage error · 3 integrity failure · 4 refused or aborted ·
//! 130 interrupted (after cleanup).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// A target failed, the cluster refused, a destination could not be written.
    Runtime,
    /// Bad flags, URLs or arguments.
    Usage,
    /// A checksum mismatch, a truncated or corrupt archive, a malformed manifest.
    Integrity,
    /// No confirmation, or a safety check refused the operation.
    Refused,
    /// SIGINT/SIGTERM, after cleanup.
    Interrupted,
}

impl ExitKind {
    pub fn code(self) -> u8 {
        match self {
            ExitKind::Runtime => 1,
            ExitKind::Usage => 2,
            ExitKind::Integrity => 3,
            ExitKind::Refused => 4,
            ExitKind::Interrupted => 130,
        }
    }

    /// When several targets fail differently, the most telling code wins: integrity beats
    /// refusal beats a plain failure.
    pub fn worst(self, other: ExitKind) -> ExitKind {
        let rank = |k: ExitKind| match k {
            ExitKind::Interrupted => 4,
            ExitKind::Integrity => 3,
            ExitKind::Refused => 2,
            ExitKind::Usage => 1,
            ExitKind::Runtime => 0,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

/// A command's failure: what the user reads, and how the process exits.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: ExitKind,
    pub message: String,
    /// Another attempt cannot succeed (forbidden, not found, image cannot be pulled,
    /// PodSecurity conflict); retries skip it.
    pub permanent: bool,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl Failure {
    pub fn new(kind: ExitKind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
            permanent: false,
        }
    }
    /// Marks a failure that no retry can fix.
    pub fn permanent(mut self) -> Self {
        self.permanent = true;
        self
    }
    pub fn runtime(message: impl Into<String>) -> Self {
        Self::new(ExitKind::Runtime, message)
    }
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(ExitKind::Usage, message)
    }
    pub fn integrity(message: impl Into<String>) -> Self {
        Self::new(ExitKind::Integrity, message)
    }
    pub fn refused(message: impl Into<String>) -> Self {
        Self::new(ExitKind::Refused, message)
    }
    pub fn interrupted() -> Self {
        Self::new(
            ExitKind::Interrupted,
            "interrupted; helper pods and partial files were removed",
        )
    }
}

impl From<crate::archive::ArchiveError> for Failure {
    fn from(e: crate::archive::ArchiveError) -> Self {
        use crate::archive::ArchiveError as A;
        let kind = match &e {
            // A flipped byte in an encrypted archive shows as a read error of its plaintext.
            A::Read { source } if crate::encryption::damage(source).is_some() => {
                ExitKind::Integrity
            }
            A::Read { .. } | A::Write { .. } | A::Spool { .. } => ExitKind::Runtime,
            _ => ExitKind::Integrity,
        };
        Failure::new(kind, e.to_string())
    }
}

impl From<crate::encryption::EncryptionError> for Failure {
    fn from(e: crate::encryption::EncryptionError) -> Self {
        use crate::encryption::EncryptionError as E;
        match e {
            E::Damaged { .. } => Failure::integrity(e.to_string()),
            E::Read { .. } => Failure::runtime(e.to_string()),
            E::BadRecipient { .. }
            | E::BadRecipientsFile { .. }
            | E::BadIdentityFile { .. }
            | E::NoIdentity { .. }
            | E::WrongIdentity { .. } => Failure::usage(e.to_string()),
        }
    }
}

impl From<crate::manifest::ManifestError> for Failure {
    fn from(e: crate::manifest::ManifestError) -> Self {
        Failure::integrity(e.to_string())
    }
}

impl From<crate::destination::DestinationError> for Failure {
    fn from(e: crate::destination::DestinationError) -> Self {
        use crate::destination::DestinationError as D;
        match e {
            D::BadUrl { .. } | D::Unsupported { .. } | D::Config(_) => {
                Failure::usage(e.to_string())
            }
            D::Store {
                permanent: true, ..
            } => Failure::runtime(e.to_string()).permanent(),
            _ => Failure::runtime(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        assert_eq!(ExitKind::Runtime.code(), 1);
        assert_eq!(ExitKind::Usage.code(), 2);
        assert_eq!(ExitKind::Integrity.code(), 3);
        assert_eq!(ExitKind::Refused.code(), 4);
        assert_eq!(ExitKind::Interrupted.code(), 130);
        assert_eq!(
            ExitKind::Runtime.worst(ExitKind::Integrity),
            ExitKind::Integrity
        );
        assert_eq!(
            ExitKind::Integrity.worst(ExitKind::Refused),
            ExitKind::Integrity
        );
    }
}
