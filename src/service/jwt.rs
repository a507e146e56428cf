//! Session JWTs: short-lived Ed25519-signed tokens of a session, for services that verify
//! sessions themselves, and the signing keys behind them (table `jwt_key`, shared by every
//! instance, published at `/.well-known/jwks.json`).
//!
//! Keys: the first start creates one. A key signs for `JWT_KEY_ROTATION`; its successor is
//! created (and so published) [`Lead`] before it takes over, so verifiers that cache the JWKS
//! already know it. A key stays published until every token it signed has expired. Instances
//! that create a key at the same moment each insert one (random kids never collide); all of
//! them then sign with the newest by `sign_from`, then kid, once they reload.

use super::identify::Identity;
use super::session::Lifetimes;
use crate::clock::{ms, now_ms};
use crate::domain::{CachedSession, SessionKind};
use crate::error::{AppError, AppResult, InternalError};
use crate::token;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use entity::jwt_key;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sea_orm::{ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Longest `audience` accepted by `sessionJwt`.
pub const MAX_AUDIENCE_LEN: usize = 255;

/// One key as this instance holds it.
struct LoadedKey {
    kid: String,
    /// The raw public key, base64url (the JWK `x`).
    x: String,
    sign_from: i64,
    sign_until: i64,
    publish_until: i64,
    encoding: EncodingKey,
}

/// The signing keys, kept in memory and reloaded from the database.
pub struct JwtKeys {
    ttl_ms: i64,
    rotation_ms: i64,
    /// How long before a key takes over it is created and published.
    lead_ms: i64,
    issuer: String,
    keys: RwLock<Arc<Vec<Arc<LoadedKey>>>>,
    /// One reload or rotation at a time in this process.
    reloading: tokio::sync::Mutex<()>,
}

/// A signed session JWT and when it expires (ms).
#[derive(Clone)]
pub struct SignedJwt {
    pub token: String,
    pub expires_at: i64,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    sid: String,
    kind: &'static str,
    ch: &'a str,
    perms: Vec<&'static str>,
    iat: i64,
    exp: i64,
    jti: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

impl JwtKeys {
    pub fn new(ttl: Duration, rotation: Duration, issuer: String) -> JwtKeys {
        let rotation_ms = ms(rotation).max(1);
        JwtKeys {
            ttl_ms: ms(ttl),
            rotation_ms,
            // Long enough for verifiers to refetch the JWKS (see `max_age`), short enough that
            // a short rotation (in tests) still works.
            lead_ms: (rotation_ms / 2).min(10 * 60 * 1000),
            issuer,
            keys: RwLock::new(Arc::new(Vec::new())),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// How often the keys are reloaded from the database (and rotated when due).
    pub fn refresh_every(&self) -> Duration {
        Duration::from_millis((self.lead_ms / 4).clamp(100, 60_000) as u64)
    }

    /// The JWKS `cache-control: max-age` in seconds: a verifier that cached the set sees a
    /// new key well before it signs anything.
    pub fn max_age_secs(&self) -> i64 {
        (self.lead_ms / 2 / 1000).min(300)
    }

    fn snapshot(&self) -> Arc<Vec<Arc<LoadedKey>>> {
        self.keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The key that signs now: the newest whose signing window holds `now`.
    fn current(&self, now: i64) -> Option<Arc<LoadedKey>> {
        self.snapshot()
            .iter()
            .filter(|k| k.sign_from <= now && now < k.sign_until)
            .max_by(|a, b| (a.sign_from, &a.kid).cmp(&(b.sign_from, &b.kid)))
            .cloned()
    }

    /// Reads the published keys from the database into memory.
    async fn reload(&self, db: &DatabaseConnection, now: i64) -> AppResult<()> {
        let rows = jwt_key::Entity::find()
            .filter(jwt_key::Column::PublishUntil.gt(now))
            .all(db)
            .await?;
        let mut keys = Vec::with_capacity(rows.len());
        for row in rows {
            let der = STANDARD
                .decode(&row.private_key)
                .map_err(InternalError::KeyBase64)?;
            keys.push(Arc::new(LoadedKey {
                encoding: EncodingKey::from_ed_der(&der),
                kid: row.kid,
                x: row.public_key,
                sign_from: row.sign_from,
                sign_until: row.sign_until,
                publish_until: row.publish_until,
            }));
        }
        keys.sort_by(|a, b| (a.sign_from, &a.kid).cmp(&(b.sign_from, &b.kid)));
        *self
            .keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(keys);
        Ok(())
    }

    /// Reloads the keys and creates the next one when no key signs `lead` from now (the first
    /// key on a fresh database signs at once).
    pub async fn refresh(&self, db: &DatabaseConnection) -> AppResult<()> {
        let _one = self.reloading.lock().await;
        let now = now_ms();
        // Keys nobody can verify with any more.
        jwt_key::Entity::delete_many()
            .filter(jwt_key::Column::PublishUntil.lte(now))
            .exec(db)
            .await?;
        self.reload(db, now).await?;
        let latest_end = self.snapshot().iter().map(|k| k.sign_until).max();
        if latest_end.is_some_and(|end| end > now + self.lead_ms) {
            return Ok(());
        }
        // Takes over where the latest key stops; at once when none signs any more.
        let sign_from = latest_end.filter(|end| *end > now).unwrap_or(now);
        self.insert_key(db, now, sign_from).await?;
        self.reload(db, now).await
    }

    async fn insert_key(&self, db: &DatabaseConnection, now: i64, sign_from: i64) -> AppResult<()> {
        let mut seed = [0u8; 32];
        token::os_random(&mut seed);
        let signing = SigningKey::from_bytes(&seed);
        let der = signing.to_pkcs8_der().map_err(InternalError::KeyEncoding)?;
        let sign_until = sign_from.saturating_add(self.rotation_ms);
        let kid = token::random_string(12);
        jwt_key::Entity::insert(jwt_key::ActiveModel {
            kid: Set(kid.clone()),
            private_key: Set(STANDARD.encode(der.as_bytes())),
            public_key: Set(URL_SAFE_NO_PAD.encode(signing.verifying_key().to_bytes())),
            created_at: Set(now),
            sign_from: Set(sign_from),
            sign_until: Set(sign_until),
            publish_until: Set(sign_until.saturating_add(self.ttl_ms)),
        })
        .exec_without_returning(db)
        .await?;
        tracing::info!(%kid, sign_from, "created a JWT signing key");
        Ok(())
    }

    /// The JWKS document: every published key, from the database (so every instance answers
    /// the same), or from memory while the database does not answer.
    pub async fn jwks(&self, db: &DatabaseConnection) -> serde_json::Value {
        let now = now_ms();
        if let Err(e) = self.reload(db, now).await {
            tracing::warn!(error = %e.client_message(), "JWKS served from memory: reload failed");
        }
        let keys: Vec<serde_json::Value> = self
            .snapshot()
            .iter()
            .filter(|k| k.publish_until > now)
            .map(|k| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "alg": "EdDSA",
                    "use": "sig",
                    "kid": k.kid,
                    "x": k.x,
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

/// The session JWT service: signs JWTs of sessions and publishes the keys (JWKS).
pub struct Jwt {
    db: sea_orm::DatabaseConnection,
    keys: JwtKeys,
    lifetimes: Lifetimes,
    /// The gateway check's JWTs, by (session, channel): a gateway checks every request, and
    /// signing each time would cost far more than the check. See [`Jwt::gateway_jwt`].
    gateway: moka::sync::Cache<(i64, i64), Arc<GatewayJwt>>,
}

/// A JWT the gateway check handed out, with what it says.
struct GatewayJwt {
    kid: String,
    user_id: Option<i64>,
    kind: SessionKind,
    channel_code: String,
    permissions: crate::permission::PermissionSet,
    jwt: SignedJwt,
}

/// Most gateway JWTs kept for reuse.
const GATEWAY_JWTS: u64 = 100_000;

impl Jwt {
    pub(super) fn new(db: sea_orm::DatabaseConnection, keys: JwtKeys, lifetimes: Lifetimes) -> Jwt {
        // Reused only while at least half its lifetime is left: no entry is useful longer.
        let reuse_for = Duration::from_millis(u64::try_from(keys.ttl_ms / 2).unwrap_or(0).max(1));
        Jwt {
            db,
            keys,
            lifetimes,
            gateway: moka::sync::Cache::builder()
                .max_capacity(GATEWAY_JWTS)
                .time_to_live(reuse_for)
                .build(),
        }
    }

    /// The session JWT of the gateway check (no audience): the one handed out for this session
    /// and channel before, while it says exactly what a new one would (same user, kind, channel
    /// code and permissions, signed with the current key) and has at least half of
    /// `SESSION_JWT_TTL` left; else a new one. A permission change shows in the next check.
    pub async fn gateway_jwt(&self, identity: &Identity) -> AppResult<Option<SignedJwt>> {
        let Some(s) = identity.session.as_deref() else {
            return Ok(None);
        };
        let permissions = identity.permissions();
        let key = (s.id, identity.channel.id);
        let now = now_ms();
        let current = self.keys.current(now);
        let current_kid = current.as_ref().map(|k| k.kid.as_str());
        if let Some(kept) = self.gateway.get(&key) {
            let same = Some(kept.kid.as_str()) == current_kid
                && kept.user_id == s.user_id()
                && kept.kind == s.kind
                && kept.channel_code == identity.channel.code
                && kept.permissions == permissions;
            if same && kept.jwt.expires_at.saturating_sub(now) >= self.keys.ttl_ms / 2 {
                return Ok(Some(kept.jwt.clone()));
            }
        }
        let jwt = self
            .session_jwt(s, &identity.channel, permissions, None)
            .await?;
        if let Some(kid) = current_kid {
            self.gateway.insert(
                key,
                Arc::new(GatewayJwt {
                    kid: kid.to_string(),
                    user_id: s.user_id(),
                    kind: s.kind,
                    channel_code: identity.channel.code.clone(),
                    permissions,
                    jwt: jwt.clone(),
                }),
            );
        }
        Ok(Some(jwt))
    }

    /// The JWKS document: every published key.
    pub async fn jwks(&self) -> serde_json::Value {
        self.keys.jwks(&self.db).await
    }

    /// `cache-control: max-age` of the JWKS, in seconds.
    pub fn max_age_secs(&self) -> i64 {
        self.keys.max_age_secs()
    }

    /// How often the key set is re-read (and a new key made when due).
    pub fn refresh_every(&self) -> std::time::Duration {
        self.keys.refresh_every()
    }

    /// Re-reads the keys, creating the next one when due.
    pub async fn refresh(&self) -> AppResult<()> {
        self.keys.refresh(&self.db).await
    }

    /// A JWT of the caller's session in the request's channel, signed with the current key.
    /// `exp` is `SESSION_JWT_TTL` away, never after the session expires.
    pub async fn session_jwt(
        &self,
        session: &CachedSession,
        identity_channel: &entity::channel::Model,
        permissions: crate::permission::PermissionSet,
        audience: Option<&str>,
    ) -> AppResult<SignedJwt> {
        if let Some(aud) = audience {
            if aud.is_empty() || aud.len() > MAX_AUDIENCE_LEN {
                return Err(AppError::bad_input(format!(
                    "audience must be 1 to {MAX_AUDIENCE_LEN} characters"
                )));
            }
        }
        let now = now_ms();
        let keys = &self.keys;
        let key = match keys.current(now) {
            Some(k) => k,
            None => {
                keys.refresh(&self.db).await?;
                keys.current(now_ms())
                    .ok_or_else(|| AppError::internal("no JWT signing key after a refresh"))?
            }
        };
        let session_expiry = self
            .lifetimes
            .expires_at(session.last_active(), session.absolute_expires_at);
        let expires_ms = now.saturating_add(keys.ttl_ms).min(session_expiry);
        let claims = Claims {
            iss: &keys.issuer,
            sub: session.user_id().map(|id| id.to_string()),
            sid: session.id.to_string(),
            kind: kind_name(session.kind),
            ch: &identity_channel.code,
            perms: permissions.to_vec().into_iter().map(|p| p.name()).collect(),
            iat: now.div_euclid(1000),
            // Whole seconds, rounded down: never after the session's expiry.
            exp: expires_ms.div_euclid(1000),
            jti: token::random_string(16),
            aud: audience,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        let token =
            jsonwebtoken::encode(&header, &claims, &key.encoding).map_err(InternalError::Jwt)?;
        Ok(SignedJwt {
            token,
            expires_at: claims.exp * 1000,
        })
    }

    /// [`Jwt::session_jwt`] for a request's identity; `None` without a session.
    pub async fn identity_jwt(
        &self,
        identity: &Identity,
        audience: Option<&str>,
    ) -> AppResult<Option<SignedJwt>> {
        match &identity.session {
            Some(s) => self
                .session_jwt(s, &identity.channel, identity.permissions(), audience)
                .await
                .map(Some),
            None => Ok(None),
        }
    }
}

/// The `kind` claim and the `x-session-kind` header.
pub fn kind_name(kind: SessionKind) -> &'static str {
    match kind {
        SessionKind::Anonymous => "anonymous",
        SessionKind::Authenticated => "authenticated",
    }
}
