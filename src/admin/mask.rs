//! Masking user ids for display in `/sessions`. A session id is `<userId>-<packageName>` and
//! the user id is an e-mail address: together with the cloud's unauthenticated webhook, a
//! listed session id is what a forger needs. A masked id keeps enough to tell rows apart
//! at a glance and too little to name the user. Pure string functions.

/// What replaces the hidden characters.
const HIDDEN: &str = "***";

/// Masks a user id. An e-mail keeps the first character of its local part, the first of its
/// domain and the domain's last label (`alice@example.com` → `a***@e***.com`); any other id
/// keeps its first character (`alice` → `a***`). An empty id stays empty.
pub fn mask_user_id(user: &str) -> String {
    match user.rsplit_once('@') {
        Some((local, domain)) => {
            let tld = match domain.rsplit_once('.') {
                Some((_, tld)) if !tld.is_empty() => format!(".{tld}"),
                _ => String::new(),
            };
            format!("{}@{}{tld}", mask_word(local), mask_word(domain))
        }
        None => mask_word(user),
    }
}

/// Masks the user part of a session id (`<userId>-<packageName>`) and keeps the package.
/// `user_id`, when known, says where the user part ends; otherwise it ends at the last `-`
/// (a package name holding a `-` is then partly masked too: more hidden, never less).
pub fn mask_session_id(session_id: &str, user_id: Option<&str>) -> String {
    let split = user_id
        .filter(|u| !u.is_empty())
        .and_then(|u| {
            session_id
                .strip_prefix(u)
                .and_then(|rest| rest.strip_prefix('-'))
                .map(|package| (u, package))
        })
        .or_else(|| session_id.rsplit_once('-'));
    match split {
        Some((user, package)) => format!("{}-{package}", mask_user_id(user)),
        // Not in the cloud's form: all of it may be the user.
        None => mask_user_id(session_id),
    }
}

/// The first character and the mask; empty stays empty.
fn mask_word(word: &str) -> String {
    match word.chars().next() {
        Some(first) => format!("{first}{HIDDEN}"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids() {
        for (id, masked) in [
            ("alice@example.com", "a***@e***.com"),
            ("bob.smith@mail.example.co.uk", "b***@m***.uk"),
            ("a@b.com", "a***@b***.com"),
            ("root@localhost", "r***@l***"),
            ("üser@exämple.de", "ü***@e***.de"),
            ("odd@", "o***@"),
            ("alice", "a***"),
            ("", ""),
        ] {
            assert_eq!(mask_user_id(id), masked, "{id}");
        }
    }

    #[test]
    fn session_ids_keep_the_package() {
        assert_eq!(
            mask_session_id(
                "alice@example.com-com.example.app",
                Some("alice@example.com")
            ),
            "a***@e***.com-com.example.app"
        );
        // Without the user id the user part ends at the last dash.
        assert_eq!(
            mask_session_id("mary-jane@example.com-com.example.app", None),
            "m***@e***.com-com.example.app"
        );
        // The user id says where a dashed package name begins.
        assert_eq!(
            mask_session_id(
                "mary-jane@example.com-com.example.my-app",
                Some("mary-jane@example.com")
            ),
            "m***@e***.com-com.example.my-app"
        );
        // A user id that is not the prefix is ignored rather than trusted.
        assert_eq!(
            mask_session_id("alice@example.com-com.example.app", Some("bob@example.com")),
            "a***@e***.com-com.example.app"
        );
        assert_eq!(mask_session_id("nodash@example.com", None), "n***@e***.com");
    }

    #[test]
    fn nothing_of_the_user_survives_but_the_kept_characters() {
        let id = "alice.wonderland@rabbit-hole.example.org-com.example.app";
        let masked = mask_session_id(id, Some("alice.wonderland@rabbit-hole.example.org"));
        assert_eq!(masked, "a***@r***.org-com.example.app");
        for secret in ["lice", "wonderland", "abbit", "hole", "example.org"] {
            assert!(!masked.contains(secret), "{secret} in {masked}");
        }
    }
}
