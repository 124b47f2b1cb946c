//! What every request meets: the rate limit, basic auth and the configured headers.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// exporter-toolkit's fixed dummy (bcrypt, cost 10, of "fakepassword"): unknown users cost one
/// cost-10 comparison, so timing does not tell which users exist, whatever the cost of the
/// configured hashes.
const DUMMY_HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

/// Successful logins remembered, so a scraper pays bcrypt once, not on every scrape.
const SUCCESS_CACHE: usize = 256;

/// Logins admitted to bcrypt (checking or waiting for a slot), per slot. A login waiting here
/// holds its connection busy, and a busy connection is never closed to make room for a new
/// one: unbounded, a flood of wrong logins would fill the connection cap. A few rounds of the
/// slots are enough to keep them all busy between arrivals.
const ADMITTED_PER_SLOT: usize = 4;

/// Retry-After of the 429 answered when every admission is taken: seconds, about the time
/// the slots take to work through a full queue of cost-10 hashes.
const RETRY_AFTER_SECONDS: &str = "1";

/// The costs bcrypt (Go's and the bcrypt crate's) can check a password against.
const BCRYPT_COSTS: std::ops::RangeInclusive<u32> = 4..=31;

/// Basic auth, rate limit and response headers, applied to every route.
pub struct Security {
    users: Option<Users>,
    headers: Vec<(HeaderName, HeaderValue)>,
    limiter: Option<RateLimiter>,
    /// bcrypt runs at once, on blocking threads: a flood of wrong passwords queues here
    /// instead of taking every core, while logins found in the cache never wait on it. Kept
    /// across reloads, so that a reload during a flood does not let more run at once.
    bcrypt_slots: Arc<Semaphore>,
    /// Logins checking or waiting for a bcrypt slot ([`ADMITTED_PER_SLOT`] per slot); one that
    /// finds none left is answered 429 at once. Kept across reloads with the slots.
    bcrypt_admissions: Arc<Semaphore>,
}

/// What a login gets.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Allowed,
    Refused,
    /// Not checked: the queue for bcrypt is full.
    Busy,
}

pub(super) struct Users {
    hashes: HashMap<String, String>,
    /// (user, SHA-256 of password) of successful logins, least recently used evicted first.
    successes: Mutex<lru::LruCache<(String, [u8; 32]), ()>>,
}

impl Users {
    pub(super) fn new(hashes: BTreeMap<String, String>) -> Result<Users, String> {
        for (user, hash) in &hashes {
            let parts = hash.parse::<bcrypt::HashParts>().map_err(|_| {
                format!("basic_auth_users: the password of {user:?} is not a bcrypt hash (hashedSecret too short to be a bcrypted password)")
            })?;
            // bcrypt refuses to check against any other cost, which would lock the user out.
            let cost = parts.get_cost();
            if !BCRYPT_COSTS.contains(&cost) {
                return Err(format!(
                    "basic_auth_users: the password of {user:?} is a bcrypt hash of cost {cost}, outside the allowed inclusive range {}..{}; hash it again, e.g. htpasswd -nBC 10 {user}",
                    BCRYPT_COSTS.start(),
                    BCRYPT_COSTS.end()
                ));
            }
        }
        Ok(Users {
            hashes: hashes.into_iter().collect(),
            successes: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(SUCCESS_CACHE).unwrap_or(NonZeroUsize::MIN),
            )),
        })
    }

    fn cached(&self, user: &str, digest: &[u8; 32]) -> bool {
        let mut successes = self
            .successes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // get, not contains: a hit counts as a use, so a scraper's entry stays.
        successes.get(&(user.to_string(), *digest)).is_some()
    }

    /// The slow check, with bcrypt; unknown users are checked against the dummy hash.
    fn verify(&self, user: &str, password: &str, digest: [u8; 32]) -> bool {
        let (hash, known) = match self.hashes.get(user) {
            Some(hash) => (hash.as_str(), true),
            None => (DUMMY_HASH, false),
        };
        let ok = bcrypt::verify(password, hash).unwrap_or(false) && known;
        if ok {
            let mut successes = self
                .successes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            successes.put((user.to_string(), digest), ());
        }
        ok
    }
}

/// golang.org/x/time/rate's token bucket as exporter-toolkit uses it: `burst` tokens, one more
/// every `every`; a request without a token gets 429. burst 0 refuses everything, as there.
pub(super) struct RateLimiter {
    every: Duration,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub(super) fn new(every: Duration, burst: u32) -> RateLimiter {
        RateLimiter {
            every,
            burst: f64::from(burst),
            state: Mutex::new((f64::from(burst), Instant::now())),
        }
    }

    fn allow(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let earned = now.duration_since(state.1).as_secs_f64() / self.every.as_secs_f64();
        *state = ((state.0 + earned).min(self.burst), now);
        if state.0 >= 1.0 {
            state.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Security {
    /// Nothing to enforce.
    pub fn none() -> Arc<Security> {
        Arc::new(Security::new(None, Vec::new(), None))
    }

    pub(super) fn new(
        users: Option<Users>,
        headers: Vec<(HeaderName, HeaderValue)>,
        limiter: Option<RateLimiter>,
    ) -> Security {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let slots = cores.clamp(2, 4);
        Security {
            users,
            headers,
            limiter,
            bcrypt_slots: Arc::new(Semaphore::new(slots)),
            bcrypt_admissions: Arc::new(Semaphore::new(slots * ADMITTED_PER_SLOT)),
        }
    }

    /// `new`, with the bcrypt slots and admissions of `previous`, whose queued logins still
    /// count.
    pub(super) fn keeping_slots_of(mut new: Arc<Security>, previous: &Security) -> Arc<Security> {
        if let Some(fresh) = Arc::get_mut(&mut new) {
            fresh.bcrypt_slots = Arc::clone(&previous.bcrypt_slots);
            fresh.bcrypt_admissions = Arc::clone(&previous.bcrypt_admissions);
        }
        new
    }

    pub fn requires_auth(&self) -> bool {
        self.users.is_some()
    }

    /// Neither basic auth nor a rate limit: [`guard`] only adds the configured headers.
    pub fn lets_everyone_in(&self) -> bool {
        self.users.is_none() && self.limiter.is_none()
    }

    /// The configured headers, replacing any of the same name.
    pub fn add_headers(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// Middleware: rate limit, then configured headers on every response and basic auth on every
/// route, in exporter-toolkit's order.
pub(crate) async fn guard(
    State(current): State<Arc<ArcSwap<Security>>>,
    request: Request,
    next: Next,
) -> Response {
    let security = current.load_full();
    if security.limiter.as_ref().is_some_and(|l| !l.allow()) {
        return (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n").into_response();
    }
    let verdict = match &security.users {
        Some(_) => authorized(&current, request.headers()).await,
        None => Verdict::Allowed,
    };
    let mut response = match verdict {
        Verdict::Allowed => next.run(request).await,
        Verdict::Refused => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"sfb-exporter\"")],
            "Unauthorized\n",
        )
            .into_response(),
        // 429, not 401: the password was never checked, and a 401 would tell a right one it
        // is wrong (a browser would ask for it again). 429 is what exporter-toolkit's
        // rate_limit already answers under load, a scrape failure Prometheus retries at the
        // next interval like any other; the answer frees the connection, which can then be
        // closed to make room for a scrape.
        Verdict::Busy => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, RETRY_AFTER_SECONDS)],
            "Too Many Requests: too many logins waiting to be checked\n",
        )
            .into_response(),
    };
    security.add_headers(response.headers_mut());
    response
}

async fn authorized(current: &ArcSwap<Security>, headers: &HeaderMap) -> Verdict {
    let security = current.load_full();
    let (Some(users), Some((user, password))) = (&security.users, basic_credentials(headers))
    else {
        return Verdict::Refused;
    };
    let mut digest = [0; 32];
    digest.copy_from_slice(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, password.as_bytes()).as_ref(),
    );
    if users.cached(&user, &digest) {
        return Verdict::Allowed;
    }
    // Held until the check is over, waiting for a slot included.
    let Ok(_admitted) = Arc::clone(&security.bcrypt_admissions).try_acquire_owned() else {
        return Verdict::Busy;
    };
    let Ok(_slot) = Arc::clone(&security.bcrypt_slots).acquire_owned().await else {
        return Verdict::Refused;
    };
    // A reload may have replaced the users while this login waited: it is checked against
    // the list of now, not the one it arrived under.
    let security = current.load_full();
    let Some(users) = &security.users else {
        return Verdict::Refused;
    };
    // The same login may have been checked while this one waited.
    if users.cached(&user, &digest) {
        return Verdict::Allowed;
    }
    // bcrypt is deliberately slow: keep it off the threads that serve other requests.
    let ok = tokio::task::spawn_blocking(move || {
        security
            .users
            .as_ref()
            .is_some_and(|users| users.verify(&user, &password, digest))
    })
    .await
    .unwrap_or(false);
    if ok {
        Verdict::Allowed
    } else {
        Verdict::Refused
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    fn basic(user: &str, password: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        headers.insert(
            header::AUTHORIZATION,
            format!("Basic {encoded}").parse().unwrap(),
        );
        headers
    }

    fn security(users: &[(&str, &str)]) -> Arc<Security> {
        let hashes = users
            .iter()
            .map(|(u, p)| (u.to_string(), bcrypt::hash(p, 4).unwrap()))
            .collect();
        Arc::new(Security::new(
            Some(Users::new(hashes).unwrap()),
            Vec::new(),
            None,
        ))
    }

    /// What the guard reads: the current configuration, which a reload replaces.
    fn current(users: &[(&str, &str)]) -> ArcSwap<Security> {
        ArcSwap::new(security(users))
    }

    #[test]
    fn the_dummy_is_the_toolkits_cost_10_hash() {
        let dummy: bcrypt::HashParts = DUMMY_HASH.parse().unwrap();
        assert_eq!(dummy.get_cost(), 10);
        assert!(bcrypt::verify("fakepassword", DUMMY_HASH).unwrap());
        let users =
            Users::new([("alice".to_string(), bcrypt::hash("pw", 4).unwrap())].into()).unwrap();
        assert!(
            !users.verify("fakeuser", "fakepassword", [0; 32]),
            "the dummy's own password lets nobody in"
        );
    }

    #[tokio::test]
    async fn checks_and_caches_only_successes() {
        let s = current(&[("alice", "s3cret")]);
        assert_eq!(
            authorized(&s, &basic("alice", "wrong")).await,
            Verdict::Refused
        );
        assert_eq!(
            authorized(&s, &basic("bob", "s3cret")).await,
            Verdict::Refused
        );
        assert_eq!(
            authorized(&s, &basic("alice", "s3cret")).await,
            Verdict::Allowed
        );
        let security = s.load();
        let users = security.users.as_ref().unwrap();
        assert_eq!(
            users.successes.lock().unwrap().len(),
            1,
            "only the success is kept"
        );
        assert_eq!(
            authorized(&s, &basic("alice", "s3cret")).await,
            Verdict::Allowed
        );
        assert_eq!(
            authorized(&s, &basic("alice", "s3cret2")).await,
            Verdict::Refused
        );
        // CVE-2022-46146: a user name that spells a hash does not share a cache entry.
        assert_eq!(
            authorized(&s, &basic("alice\0", "s3cret")).await,
            Verdict::Refused
        );
    }

    #[test]
    fn the_cache_evicts_the_least_recently_used_one_at_a_time() {
        let users = Users::new([("u".to_string(), bcrypt::hash("pw", 4).unwrap())].into()).unwrap();
        let mut successes = users.successes.lock().unwrap();
        for i in 0..SUCCESS_CACHE {
            successes.put((format!("u{i}"), [0; 32]), ());
        }
        // u0 is used again, so u1 is now the least recently used.
        assert!(successes.get(&("u0".to_string(), [0; 32])).is_some());
        successes.put(("new".to_string(), [0; 32]), ());
        assert_eq!(successes.len(), SUCCESS_CACHE, "one out, not all");
        assert!(successes.contains(&("u0".to_string(), [0; 32])));
        assert!(!successes.contains(&("u1".to_string(), [0; 32])));
    }

    /// A flood of unknown users holding every bcrypt slot does not hold up a scraper whose
    /// login succeeded before: it is answered without waiting for a slot. Logins beyond the
    /// admitted ones are answered at once, so they do not hold their connections either.
    #[tokio::test]
    async fn an_unknown_user_flood_does_not_starve_a_valid_login() {
        let s = Arc::new(current(&[("prometheus", "pw")]));
        assert_eq!(
            authorized(&s, &basic("prometheus", "pw")).await,
            Verdict::Allowed
        );
        let bcrypt_slots = Arc::clone(&s.load().bcrypt_slots);
        let slots = bcrypt_slots.available_permits();
        assert!(slots >= 2, "several bcrypt checks at once");
        let admitted = s.load().bcrypt_admissions.available_permits();
        assert_eq!(admitted, slots * ADMITTED_PER_SLOT);

        // The flood: every slot busy, as many unknown users queued as are admitted.
        let held = bcrypt_slots.acquire_many(slots as u32).await.unwrap();
        let mut cx = Context::from_waker(Waker::noop());
        let intruders: Vec<HeaderMap> = (0..admitted)
            .map(|i| basic(&format!("intruder{i}"), "x"))
            .collect();
        let mut queued: Vec<_> = intruders
            .iter()
            .map(|intruder| Box::pin(authorized(&s, intruder)))
            .collect();
        for login in &mut queued {
            assert!(
                login.as_mut().poll(&mut cx).is_pending(),
                "the flood waits for a slot"
            );
        }
        let one_more = basic("intruder", "x");
        assert_eq!(
            pin!(authorized(&s, &one_more)).poll(&mut cx),
            Poll::Ready(Verdict::Busy),
            "beyond the admitted ones, answered at once"
        );
        let scraper = basic("prometheus", "pw");
        assert_eq!(
            pin!(authorized(&s, &scraper)).poll(&mut cx),
            Poll::Ready(Verdict::Allowed),
            "the scraper does not wait"
        );

        // A queued login that ends gives its admission back. Not run to the end: each would
        // cost a cost-10 bcrypt.
        queued.pop();
        assert_eq!(
            pin!(authorized(&s, &one_more)).poll(&mut cx),
            Poll::Pending,
            "admitted again"
        );
        drop(queued);
        drop(held);
    }

    #[test]
    fn hashes_of_a_cost_bcrypt_cannot_check_are_refused_naming_the_user() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let with_cost = |cost: &str| format!("$2y${cost}{}", &hash[6..]);
        let load = |cost: &str| Users::new([("alice".to_string(), with_cost(cost))].into());
        for cost in ["04", "10", "31"] {
            assert!(load(cost).is_ok(), "cost {cost}");
        }
        for (cost, shown) in [("00", "0"), ("03", "3"), ("32", "32"), ("99", "99")] {
            let Err(e) = load(cost) else {
                panic!("cost {cost} accepted")
            };
            assert!(
                e.contains("the password of \"alice\" is a bcrypt hash of cost ")
                    && e.contains(&format!(
                        "cost {shown}, outside the allowed inclusive range 4..31"
                    )),
                "{e}"
            );
            assert!(!e.contains(&hash[7..]), "the hash is not shown: {e}");
        }
    }

    /// A login queued behind a flood is checked, once a bcrypt slot frees, against the users
    /// of then: a reload that replaced a password in the meantime is not bypassed.
    #[tokio::test]
    async fn a_queued_login_meets_the_users_of_now() {
        let s = current(&[("alice", "old")]);
        let slots = Arc::clone(&s.load().bcrypt_slots);
        let held = slots
            .acquire_many(slots.available_permits() as u32)
            .await
            .unwrap();
        let mut cx = Context::from_waker(Waker::noop());
        let (old, new) = (basic("alice", "old"), basic("alice", "new"));
        let mut with_old = pin!(authorized(&s, &old));
        let mut with_new = pin!(authorized(&s, &new));
        assert!(with_old.as_mut().poll(&mut cx).is_pending(), "queued");
        assert!(with_new.as_mut().poll(&mut cx).is_pending(), "queued");

        // The reload: alice's password replaced, the bcrypt slots kept.
        s.store(Security::keeping_slots_of(
            security(&[("alice", "new")]),
            &s.load(),
        ));
        let after = basic("alice", "new");
        let mut arrived_after = pin!(authorized(&s, &after));
        assert!(
            arrived_after.as_mut().poll(&mut cx).is_pending(),
            "the flood still holds the slots after the reload"
        );

        drop(held);
        assert_eq!(with_old.await, Verdict::Refused, "the replaced password");
        assert_eq!(with_new.await, Verdict::Allowed, "the new one");
        assert_eq!(arrived_after.await, Verdict::Allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_as_golang_x_time_rate() {
        let limiter = RateLimiter::new(Duration::from_secs(1), 2);
        assert!(limiter.allow() && limiter.allow(), "the burst");
        assert!(!limiter.allow());
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!limiter.allow());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(limiter.allow(), "one token per interval");
        assert!(!limiter.allow());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(
            limiter.allow() && limiter.allow() && !limiter.allow(),
            "never more than the burst"
        );
        let none = RateLimiter::new(Duration::from_secs(1), 0);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!none.allow(), "burst 0 lets nothing through, as in Go");
    }

    #[test]
    fn credentials_from_the_header() {
        assert_eq!(
            basic_credentials(&basic("alice", "pa:ss")),
            Some(("alice".into(), "pa:ss".into()))
        );
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(basic_credentials(&headers), None);
        headers.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(basic_credentials(&headers), None);
    }
}
