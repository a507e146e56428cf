//! Session JWTs (`sessionJwt`, `/.well-known/jwks.json`), verified as another service would:
//! with the `jsonwebtoken` crate and only the published JWKS. A valid token verifies with its
//! claims; tampered, expired, foreign-key and `alg: none` tokens do not; `exp` never passes the
//! session's expiry; keys rotate with an overlap.

use crate::all_caches;
use crate::helpers::{str_of, Api, TestApp, Variant};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub const SESSION_JWT: &str = "query($a: String) { sessionJwt(audience: $a) { token expiresAt } }";

/// `GET /.well-known/jwks.json`: the key set and the `cache-control` header.
pub async fn jwks(api: &Api) -> (JwkSet, String) {
    let r = api
        .client
        .get(api.url("/.well-known/jwks.json"))
        .send()
        .await
        .expect("the JWKS answers");
    assert_eq!(r.status(), 200);
    let cache = r
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (r.json().await.expect("a JWK set"), cache)
}

/// Verifies `token` as an independent service: the key named by its `kid` from `set`, EdDSA
/// only, the issuer, the audience when given, no leeway.
pub fn verify(set: &JwkSet, token: &str, audience: Option<&str>) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("header: {e}"))?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = set.find(&kid).ok_or_else(|| format!("unknown kid {kid}"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key: {e}"))?;
    let mut v = Validation::new(Algorithm::EdDSA);
    v.leeway = 0;
    v.set_issuer(&["session-server"]);
    v.set_required_spec_claims(&["exp", "iss"]);
    match audience {
        Some(a) => v.set_audience(&[a]),
        None => v.validate_aud = false,
    }
    jsonwebtoken::decode::<Value>(token, &key, &v)
        .map(|d| d.claims)
        .map_err(|e| format!("{e}"))
}

pub fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

async fn session_jwt(api: &Api, token: &str, audience: Option<&str>) -> (String, Value) {
    let r = api
        .gql_as(token, SESSION_JWT, json!({ "a": audience }))
        .await
        .ok();
    let jwt = &r.data()["sessionJwt"];
    (str_of(&jwt["token"]), jwt.clone())
}

fn rfc3339_ms(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

async fn jwts_verify_with_the_published_keys_only(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| c.session_jwt_ttl = Duration::from_secs(2)).await
    else {
        return;
    };
    let (set, cache) = jwks(&app).await;
    assert!(cache.contains("max-age="), "{cache}");
    assert!(!set.keys.is_empty());
    let raw: Value = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for k in raw["keys"].as_array().unwrap() {
        assert_eq!(k["kty"], "OKP");
        assert_eq!(k["crv"], "Ed25519");
        assert_eq!(k["alg"], "EdDSA");
        assert_eq!(k["use"], "sig");
        assert!(k["kid"].is_string() && k["x"].is_string(), "{k}");
        assert!(k.get("d").is_none(), "a private key is published: {k}");
    }

    // Without a session: null.
    let r = app.gql(SESSION_JWT, json!({})).await.ok();
    assert!(r.data()["sessionJwt"].is_null(), "{}", r.body);

    // An authenticated session with READ_SESSION in the default channel.
    let admin = app.admin_token().await;
    let role = app.create_role(&admin, "reader", &["READ_SESSION"]).await;
    let alice = app
        .create_user(&admin, "alice", "alice-password", &[&role])
        .await;
    let t = app.login("alice", "alice-password").await.token;
    let sid = str_of(&app.active_session(&t).await["id"]);
    let (jwt, answer) = session_jwt(&app, &t, Some("cart")).await;
    assert_eq!(jwt.split('.').count(), 3);
    let header = jsonwebtoken::decode_header(&jwt).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    let c = verify(&set, &jwt, Some("cart")).expect("a fresh token verifies");
    assert_eq!(c["iss"], "session-server");
    assert_eq!(c["sub"], alice.as_str());
    assert_eq!(c["sid"], sid.as_str());
    assert_eq!(c["kind"], "authenticated");
    assert_eq!(c["ch"], "default");
    assert_eq!(c["perms"], json!(["READ_SESSION"]));
    assert_eq!(c["aud"], "cart");
    assert!(c["jti"].as_str().is_some_and(|j| j.len() >= 16), "{c}");
    let (iat, exp) = (c["iat"].as_i64().unwrap(), c["exp"].as_i64().unwrap());
    assert_eq!(exp - iat, 2, "SESSION_JWT_TTL=2s: {c}");
    assert_eq!(rfc3339_ms(&answer["expiresAt"]), exp * 1000);
    // Another audience is refused; a second token has its own jti.
    assert!(verify(&set, &jwt, Some("search")).is_err());
    let (again, _) = session_jwt(&app, &t, None).await;
    assert!(claims_of(&again).get("aud").is_none());
    assert_ne!(claims_of(&again)["jti"], c["jti"]);

    // The superadmin holds every permission everywhere.
    let (admin_jwt, _) = session_jwt(&app, &admin, None).await;
    let perms = verify(&set, &admin_jwt, None).unwrap()["perms"].clone();
    assert!(perms.as_array().unwrap().len() >= 9, "{perms}");

    // Anonymous: no sub, kind anonymous, no permissions.
    let (anon, _) = app.anonymous_session().await;
    let (anon_jwt, _) = session_jwt(&app, &anon, None).await;
    let c = verify(&set, &anon_jwt, None).unwrap();
    assert!(c.get("sub").is_none(), "{c}");
    assert_eq!(c["kind"], "anonymous");
    assert_eq!(c["perms"], json!([]));

    // Bad audience: BAD_USER_INPUT.
    let r = app.gql_as(&t, SESSION_JWT, json!({ "a": "" })).await;
    assert_eq!(r.error_code(), Some("BAD_USER_INPUT"), "{}", r.body);
    let r = app
        .gql_as(&t, SESSION_JWT, json!({ "a": "x".repeat(300) }))
        .await;
    assert_eq!(r.error_code(), Some("BAD_USER_INPUT"), "{}", r.body);

    // Tampered payload (more permissions), same signature: refused.
    let parts: Vec<&str> = jwt.split('.').collect();
    let mut forged = claims_of(&jwt);
    forged["perms"] = json!(["SUPER_ADMIN"]);
    let forged_payload = URL_SAFE_NO_PAD.encode(forged.to_string());
    let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert!(verify(&set, &tampered, Some("cart")).is_err());
    // A flipped signature byte: refused.
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[0] ^= 1;
    let flipped = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));
    assert!(verify(&set, &flipped, Some("cart")).is_err());

    // Signed by a key the server never published, under a published kid or a new one: refused.
    let mut seed = [0u8; 32];
    session_server::token::os_random(&mut seed);
    let foreign = ed25519_dalek::SigningKey::from_bytes(&seed);
    let der = ed25519_dalek::pkcs8::EncodePrivateKey::to_pkcs8_der(&foreign).unwrap();
    for kid in [kid_of(&jwt), "not-ours".to_string()] {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(kid);
        let token =
            jsonwebtoken::encode(&h, &forged, &EncodingKey::from_ed_der(der.as_bytes())).unwrap();
        assert!(verify(&set, &token, Some("cart")).is_err());
    }

    // `alg: none` (no signature): refused.
    let none_header = URL_SAFE_NO_PAD
        .encode(json!({ "alg": "none", "typ": "JWT", "kid": kid_of(&jwt) }).to_string());
    let unsigned = format!("{none_header}.{}.", parts[1]);
    assert!(verify(&set, &unsigned, Some("cart")).is_err());

    // Expired (SESSION_JWT_TTL=2s): refused, though the session lives on.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let err = verify(&set, &jwt, Some("cart")).unwrap_err();
    assert!(err.to_lowercase().contains("expired"), "{err}");
    assert!(!app.active_session(&t).await.is_null());
}

/// `exp` is `SESSION_JWT_TTL` away but never after the session's own expiry.
async fn jwt_never_outlives_its_session(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.session_idle_timeout = Duration::from_secs(3);
        c.session_absolute_timeout = Duration::from_secs(3600);
        c.session_activity_write_interval = Duration::from_millis(500);
    })
    .await
    else {
        return;
    };
    let (anon, _) = app.anonymous_session().await;
    let (jwt, answer) = session_jwt(&app, &anon, None).await;
    let session = app.active_session(&anon).await;
    let expires = rfc3339_ms(&session["expiresAt"]);
    let (set, _) = jwks(&app).await;
    let c = verify(&set, &jwt, None).unwrap();
    let exp = c["exp"].as_i64().unwrap();
    assert!(
        exp * 1000 <= expires,
        "exp {exp} after the session's expiry {expires}"
    );
    // Far below the default five minutes: the session's idle timeout capped it.
    assert!(exp - c["iat"].as_i64().unwrap() <= 3, "{c}");
    assert_eq!(rfc3339_ms(&answer["expiresAt"]), exp * 1000);
}

/// With `JWT_KEY_ROTATION=2s`: the next key is published before it signs, a new key takes
/// over, the retired key stays in the JWKS while a token it signed is unexpired, then leaves.
async fn keys_rotate_with_an_overlap(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.jwt_key_rotation = Duration::from_secs(2);
        c.session_jwt_ttl = Duration::from_secs(1);
    })
    .await
    else {
        return;
    };
    let (anon, _) = app.anonymous_session().await;
    let (first, _) = session_jwt(&app, &anon, None).await;
    let k1 = kid_of(&first);
    let mut last_k1 = first;
    let deadline = Instant::now() + Duration::from_secs(10);
    // Poll: the JWKS, then a token; the new kid must have been published before it signs.
    let (k2, k2_token, published_before) = loop {
        assert!(Instant::now() < deadline, "no new key within 10 s");
        let (set, _) = jwks(&app).await;
        let (jwt, _) = session_jwt(&app, &anon, None).await;
        let kid = kid_of(&jwt);
        if kid == k1 {
            last_k1 = jwt;
        } else {
            break (kid.clone(), jwt, set.find(&kid).is_some());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        published_before,
        "key {k2} signed before the JWKS published it"
    );
    // Both keys are published now: the last token of the old key still verifies.
    let (set, _) = jwks(&app).await;
    assert!(set.find(&k1).is_some() && set.find(&k2).is_some());
    verify(&set, &k2_token, None).expect("the new key's token verifies");
    let last_exp = verify(&set, &last_k1, None)
        .expect("the retired key's unexpired token verifies")["exp"]
        .as_i64()
        .unwrap();
    // The retired key leaves once every token it signed has expired, not before.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            Instant::now() < deadline,
            "retired key {k1} still published"
        );
        let (set, _) = jwks(&app).await;
        if set.find(&k1).is_none() {
            let now = chrono::Utc::now().timestamp_millis();
            assert!(
                now >= last_exp * 1000,
                "key {k1} left the JWKS at {now}, before its token expired at {last_exp}"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

all_caches!(
    jwts_verify_with_the_published_keys_only,
    jwt_never_outlives_its_session,
    keys_rotate_with_an_overlap
);
