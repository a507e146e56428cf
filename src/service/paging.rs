//! Paging by id cursor, for every listing: a page is at most `first` rows after the row whose id
//! is the cursor, in id order; one row more is read to learn whether another page follows.

use crate::error::AppResult;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Select,
};

/// A page of a listing ordered by id.
pub struct Page<T> {
    pub items: Vec<T>,
    /// The number of matching rows, when it was asked for (it costs a statement).
    pub total: Option<u64>,
    pub has_next: bool,
    pub has_previous: bool,
}

/// Which page a client asked for.
#[derive(Clone, Copy, Debug)]
pub struct PageRequest {
    /// At most this many rows.
    pub first: u64,
    /// The id of the last row of the previous page.
    pub after: Option<i64>,
    /// Whether to count every matching row.
    pub with_total: bool,
}

/// The direction of a listing.
#[derive(Clone, Copy, Debug)]
pub enum IdOrder {
    Ascending,
    /// Newest first.
    Descending,
}

/// The page `req` of `query` (its filters only: the order and limit are set here), by the id
/// column `id`.
pub async fn page_by_id<E, C>(
    db: &C,
    query: Select<E>,
    id: E::Column,
    order: IdOrder,
    req: PageRequest,
) -> AppResult<Page<E::Model>>
where
    E: EntityTrait,
    E::Model: Sync,
    C: ConnectionTrait,
{
    let total = if req.with_total {
        Some(query.clone().count(db).await?)
    } else {
        None
    };
    let query = match (order, req.after) {
        (IdOrder::Ascending, Some(after)) => query.filter(id.gt(after)),
        (IdOrder::Descending, Some(after)) => query.filter(id.lt(after)),
        (_, None) => query,
    };
    let query = match order {
        IdOrder::Ascending => query.order_by_asc(id),
        IdOrder::Descending => query.order_by_desc(id),
    };
    let mut items = query.limit(req.first.saturating_add(1)).all(db).await?;
    let has_next = items.len() as u64 > req.first;
    items.truncate(usize::try_from(req.first).unwrap_or(usize::MAX));
    Ok(Page {
        items,
        total,
        has_next,
        has_previous: req.after.is_some(),
    })
}
