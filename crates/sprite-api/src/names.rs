//! Sprite names: `[a-z0-9-]{1,63}`, not starting or ending with `-`, so a name is
//! always a valid DNS label (it becomes the host name and the URL's first label).

/// Why a sprite name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("sprite name is empty")]
    Empty,
    #[error("sprite name is {0} characters long; at most 63 are allowed")]
    TooLong(usize),
    #[error("sprite name {name:?} has the character {character:?}; use only a-z, 0-9 and -")]
    BadCharacter { name: String, character: char },
    #[error("sprite name {0:?} starts or ends with '-'")]
    EdgeHyphen(String),
}

/// Checks a sprite name against the rules above.
pub fn validate_sprite_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > 63 {
        return Err(NameError::TooLong(name.chars().count()));
    }
    if let Some(character) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::BadCharacter {
            name: name.to_string(),
            character,
        });
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(NameError::EdgeHyphen(name.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for name in ["a", "my-sprite", "x1", &"a".repeat(63)] {
            assert_eq!(validate_sprite_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(validate_sprite_name(""), Err(NameError::Empty));
        assert_eq!(
            validate_sprite_name(&"a".repeat(64)),
            Err(NameError::TooLong(64))
        );
        assert!(matches!(
            validate_sprite_name("Upper"),
            Err(NameError::BadCharacter { character: 'U', .. })
        ));
        assert!(matches!(
            validate_sprite_name("a/b"),
            Err(NameError::BadCharacter { .. })
        ));
        assert!(matches!(
            validate_sprite_name("-a"),
            Err(NameError::EdgeHyphen(_))
        ));
        assert!(matches!(
            validate_sprite_name("a.b"),
            Err(NameError::BadCharacter { .. })
        ));
    }
}
