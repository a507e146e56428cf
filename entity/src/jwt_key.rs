//! The Ed25519 keys that sign session JWTs. The newest key whose signing window has begun
//! signs; every key is published in the JWKS until `publish_until`.
use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "jwt_key")]
pub struct Model {
    /// The JWK `kid`: random, base64url.
    #[sea_orm(primary_key, auto_increment = false)]
    pub kid: String,
    /// The private key, PKCS#8 DER, base64 (standard alphabet).
    pub private_key: String,
    /// The raw 32-byte public key, base64url without padding (the JWK `x`).
    pub public_key: String,
    pub created_at: i64,
    /// The key signs from here...
    pub sign_from: i64,
    /// ...until here (`sign_from + JWT_KEY_ROTATION`).
    pub sign_until: i64,
    /// Published until every token it signed has expired (`sign_until + SESSION_JWT_TTL`).
    pub publish_until: i64,
}

impl ActiveModelBehavior for ActiveModel {}
