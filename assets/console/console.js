// The operator console: plain JavaScript over the public GraphQL API (POST /graphql) with the
// signed-in admin's bearer token, kept in this tab's sessionStorage. It shows the sections the
// admin's permissions (in the request's channel) allow; the server stays the authority, so every
// refusal it answers is shown as it comes.
(function () {
  'use strict';

  var ENDPOINT = '/graphql';
  var TOKEN_KEY = 'session-server.console.token';
  var $ = function (id) { return document.getElementById(id); };

  var state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    perms: [],
    channel: null,
    sessions: { cursors: [null], page: 0 },
    users: { cursors: [null], page: 0 },
    filter: {}
  };

  // ---- GraphQL ------------------------------------------------------------------------------

  function GqlError(errors) {
    this.errors = errors;
    var first = errors[0] || {};
    this.code = (first.extensions && first.extensions.code) || 'ERROR';
    this.message = errors.map(function (e) { return e.message; }).join('; ');
  }

  // Runs one operation; resolves to { data, headers } or rejects with a GqlError.
  function gql(query, variables) {
    var headers = { 'content-type': 'application/json', accept: 'application/json' };
    if (state.token) headers.authorization = 'Bearer ' + state.token;
    // credentials: 'omit': the console is bearer-only, so a cookie session of the playground in
    // the same browser never mixes in.
    return fetch(ENDPOINT, {
      method: 'POST',
      credentials: 'omit',
      headers: headers,
      body: JSON.stringify({ query: query, variables: variables || {} })
    }).then(function (response) {
      return response.json().then(function (body) {
        if (body.errors && body.errors.length) throw new GqlError(body.errors);
        return { data: body.data, headers: response.headers };
      }, function () {
        throw new GqlError([{ message: 'HTTP ' + response.status, extensions: { code: 'HTTP_' + response.status } }]);
      });
    });
  }

  // ---- Messages -----------------------------------------------------------------------------

  function say(text) {
    $('alert').hidden = true;
    $('status').textContent = text;
  }

  function fail(err, what) {
    $('status').textContent = '';
    var alert = $('alert');
    if (err instanceof GqlError) {
      if (err.code === 'FORBIDDEN') {
        alert.textContent = 'Refused: ' + what + ' is not allowed for you (FORBIDDEN: ' + err.message + ').';
      } else if (err.code === 'UNAUTHENTICATED') {
        alert.textContent = what + ' failed: your session has ended (UNAUTHENTICATED). Sign in again.';
      } else {
        alert.textContent = what + ' failed (' + err.code + '): ' + err.message;
      }
    } else {
      alert.textContent = what + ' failed: ' + (err && err.message ? err.message : String(err));
    }
    alert.hidden = false;
    if (err instanceof GqlError && err.code === 'UNAUTHENTICATED') signedOut();
  }

  // ---- Helpers ------------------------------------------------------------------------------

  function el(tag, props, children) {
    var node = document.createElement(tag);
    Object.keys(props || {}).forEach(function (k) {
      if (k === 'text') node.textContent = props[k];
      else if (k === 'className') node.className = props[k];
      else if (k === 'dataset') Object.assign(node.dataset, props[k]);
      else node.setAttribute(k, props[k]);
    });
    (children || []).forEach(function (c) { if (c) node.appendChild(c); });
    return node;
  }

  function when(iso) {
    if (!iso) return '—';
    var d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }

  function cell(label, text, extra) {
    var td = el('td', { 'data-label': label, text: text });
    if (extra) td.appendChild(extra);
    return td;
  }

  function has(perm) {
    return state.perms.indexOf('SUPER_ADMIN') >= 0 || state.perms.indexOf(perm) >= 0;
  }

  // A modal confirmation (Enter or the button confirms, Escape cancels); resolves to a boolean.
  function confirmAction(text, okLabel) {
    var dialog = $('confirm');
    $('confirm-text').textContent = text;
    $('confirm-ok').textContent = okLabel || 'Revoke';
    return new Promise(function (resolve) {
      dialog.addEventListener('close', function onClose() {
        dialog.removeEventListener('close', onClose);
        resolve(dialog.returnValue === 'ok');
      });
      dialog.returnValue = 'cancel';
      dialog.showModal();
      $('confirm-cancel').focus();
    });
  }

  // ---- Sign in / out ------------------------------------------------------------------------

  var LOGIN = 'mutation($u: String!, $p: String!) { login(username: $u, password: $p) { __typename ' +
    '... on InvalidCredentialsError { message } ... on NotVerifiedError { message } ' +
    '... on TooManyAttemptsError { message retryAfterSeconds } } }';

  $('sign-in').addEventListener('submit', function (event) {
    event.preventDefault();
    state.token = null;
    gql(LOGIN, { u: $('username').value, p: $('password').value }).then(function (r) {
      var result = r.data.login;
      if (result.__typename !== 'AuthenticationSuccess') {
        fail(new Error(result.message), 'Sign-in');
        return;
      }
      state.token = r.headers.get('session-token');
      sessionStorage.setItem(TOKEN_KEY, state.token);
      $('password').value = '';
      return start();
    }).catch(function (err) { fail(err, 'Sign-in'); });
  });

  $('sign-out').addEventListener('click', function () {
    gql('mutation { logout }').catch(function () { /* the session may already be gone */ })
      .then(function () { signedOut(); say('Signed out.'); });
  });

  function signedOut() {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    $('app').hidden = true;
    $('who').hidden = true;
    $('sign-in-section').hidden = false;
  }

  var ME = '{ me { identifier channels { channelCode permissions } } activeChannel { id code } }';

  function start() {
    return gql(ME).then(function (r) {
      if (!r.data.me) {
        signedOut();
        fail(new Error('this session is not signed in'), 'Loading the console');
        return;
      }
      state.channel = r.data.activeChannel;
      var here = r.data.me.channels.filter(function (c) { return c.channelCode === state.channel.code; })[0];
      state.perms = here ? here.permissions : [];
      $('who-name').textContent = 'Signed in as ' + r.data.me.identifier;
      $('who').hidden = false;
      $('sign-in-section').hidden = true;
      $('app').hidden = false;
      var missing = [];
      $('permissions').textContent = 'Your permissions in channel ' + state.channel.code + ': ' +
        (state.perms.length ? state.perms.join(', ') : 'none') + '.';
      var canSessions = has('READ_SESSION');
      $('stats-section').hidden = !canSessions;
      $('sessions-section').hidden = !canSessions;
      $('users-section').hidden = !has('READ_USER');
      if (!canSessions) missing.push('statistics and sessions need READ_SESSION');
      if (!has('READ_USER')) missing.push('users need READ_USER');
      if (!has('REVOKE_SESSION')) missing.push('revoking needs REVOKE_SESSION, which the server will refuse');
      if (missing.length) $('permissions').textContent += ' Not available to you: ' + missing.join('; ') + '.';
      say('Signed in.');
      var work = [];
      if (canSessions) work.push(loadStats(), loadSessions());
      if (has('READ_USER')) work.push(loadUsers());
      if (has('READ_CHANNEL')) work.push(loadChannels());
      return Promise.all(work);
    }).catch(function (err) { fail(err, 'Loading the console'); });
  }

  // ---- Statistics ---------------------------------------------------------------------------

  function loadStats() {
    return gql('{ sessionStats { anonymous authenticated expiredAwaitingCleanup invalidated } }').then(function (r) {
      var s = r.data.sessionStats;
      var dl = $('stats');
      dl.textContent = '';
      [['Anonymous', s.anonymous], ['Authenticated', s.authenticated],
        ['Expired, awaiting clean-up', s.expiredAwaitingCleanup], ['Invalidated', s.invalidated]]
        .forEach(function (pair) {
          dl.appendChild(el('div', {}, [el('dt', { text: pair[0] }), el('dd', { text: String(pair[1]) })]));
        });
    }).catch(function (err) { fail(err, 'Loading statistics'); });
  }
  $('stats-refresh').addEventListener('click', loadStats);

  function loadChannels() {
    return gql('{ channels { id code } }').then(function (r) {
      var list = $('channel-list');
      list.textContent = '';
      r.data.channels.forEach(function (c) { list.appendChild(el('option', { value: c.id, label: c.code })); });
    }).catch(function (err) { fail(err, 'Loading channels'); });
  }

  // ---- Sessions -----------------------------------------------------------------------------

  var SESSIONS = 'query($f: SessionFilter, $first: Int, $after: String) { sessions(filter: $f, first: $first, after: $after) { ' +
    'totalCount pageInfo { hasNextPage endCursor } nodes { id kind current invalidated user { id identifier } ' +
    'activeChannel { code } activeOrder { id code } createdAt lastActiveAt expiresAt ipAddress userAgent } } }';

  function readFilter() {
    var f = {};
    if ($('f-user').value.trim()) f.userId = $('f-user').value.trim();
    if ($('f-kind').value) f.kind = $('f-kind').value;
    if ($('f-channel').value.trim()) f.channelId = $('f-channel').value.trim();
    if ($('f-expired').checked) f.includeExpired = true;
    if ($('f-invalidated').checked) f.includeInvalidated = true;
    return f;
  }

  function loadSessions() {
    var p = state.sessions;
    var first = parseInt($('f-size').value, 10);
    return gql(SESSIONS, { f: state.filter, first: first, after: p.cursors[p.page] }).then(function (r) {
      var conn = r.data.sessions;
      var body = $('sessions').tBodies[0];
      body.textContent = '';
      conn.nodes.forEach(function (s) { body.appendChild(sessionRow(s)); });
      if (!conn.nodes.length) body.appendChild(el('tr', {}, [el('td', { colspan: '10', text: 'No sessions match.' })]));
      $('sessions-count').textContent = conn.totalCount + ' session' + (conn.totalCount === 1 ? '' : 's') + ' match.';
      p.cursors[p.page + 1] = conn.pageInfo.endCursor;
      $('sessions-prev').disabled = p.page === 0;
      $('sessions-next').disabled = !conn.pageInfo.hasNextPage;
      $('sessions-page').textContent = 'Page ' + (p.page + 1);
      var userId = state.filter.userId;
      $('revoke-user').hidden = !userId;
      $('revoke-user').dataset.userId = userId || '';
    }).catch(function (err) { fail(err, 'Loading sessions'); });
  }

  function sessionState(s) {
    if (s.invalidated) return 'invalidated';
    if (new Date(s.expiresAt) <= new Date()) return 'expired';
    return 'live';
  }

  function sessionRow(s) {
    var st = sessionState(s);
    var userCell = s.user
      ? cell('User', s.user.identifier, el('span', { className: 'id', text: 'user ' + s.user.id }))
      : cell('User', '—');
    userCell.appendChild(el('span', { className: 'id', text: 'session ' + s.id + (s.current ? ' (this console)' : '') }));
    var actions = el('td', { className: 'row-actions', 'data-label': 'Actions' });
    if (st === 'live') {
      actions.appendChild(el('button', {
        type: 'button', className: 'revoke-session', text: 'Revoke',
        'aria-label': 'Revoke session ' + s.id, dataset: { sessionId: s.id }
      }));
    }
    if (s.user) {
      actions.appendChild(el('button', {
        type: 'button', className: 'user-sessions', text: 'User\u2019s sessions',
        'aria-label': 'Show the sessions of ' + s.user.identifier, dataset: { userId: s.user.id }
      }));
    }
    return el('tr', { dataset: { sessionId: s.id } }, [
      userCell,
      cell('Kind', s.kind.toLowerCase()),
      cell('Address', s.ipAddress || '—'),
      el('td', { className: 'ua', 'data-label': 'User agent', text: s.userAgent || '—' }),
      cell('Created', when(s.createdAt)),
      cell('Last active', when(s.lastActiveAt)),
      cell('Expires', when(s.expiresAt)),
      cell('Channel', s.activeChannel ? s.activeChannel.code : '—'),
      el('td', { 'data-label': 'State', className: 'state-' + st, text: st }),
      actions
    ]);
  }

  $('filters').addEventListener('submit', function (event) {
    event.preventDefault();
    state.filter = readFilter();
    state.sessions = { cursors: [null], page: 0 };
    loadSessions();
  });
  $('f-clear').addEventListener('click', function () {
    $('filters').reset();
    state.filter = {};
    state.sessions = { cursors: [null], page: 0 };
    loadSessions();
  });
  $('sessions-prev').addEventListener('click', function () {
    if (state.sessions.page > 0) { state.sessions.page -= 1; loadSessions(); }
  });
  $('sessions-next').addEventListener('click', function () {
    state.sessions.page += 1;
    loadSessions();
  });

  function showUserSessions(userId) {
    $('filters').reset();
    $('f-user').value = userId;
    state.filter = readFilter();
    state.sessions = { cursors: [null], page: 0 };
    return loadSessions().then(function () { $('sessions-title').focus(); });
  }

  function afterRevocation(message) {
    say(message);
    return Promise.all([loadStats(), loadSessions(), has('READ_USER') ? loadUsers() : null]);
  }

  $('sessions').addEventListener('click', function (event) {
    var button = event.target.closest('button');
    if (!button) return;
    if (button.classList.contains('user-sessions')) { showUserSessions(button.dataset.userId); return; }
    if (!button.classList.contains('revoke-session')) return;
    var id = button.dataset.sessionId;
    confirmAction('Revoke session ' + id + '? Its token stops working at once.').then(function (ok) {
      if (!ok) return;
      return gql('mutation($id: ID!) { revokeSession(id: $id) }', { id: id }).then(function (r) {
        return afterRevocation(r.data.revokeSession ? 'Session ' + id + ' revoked.' : 'Session ' + id + ' was already gone.');
      });
    }).catch(function (err) { fail(err, 'Revoking session ' + id); });
  });

  function revokeUser(userId, label) {
    return confirmAction('Revoke every session of ' + label + '? All of them stop working at once.', 'Revoke all')
      .then(function (ok) {
        if (!ok) return;
        return gql('mutation($id: ID!) { revokeSessionsByUser(userId: $id) }', { id: userId }).then(function (r) {
          var n = r.data.revokeSessionsByUser;
          return afterRevocation(n + ' session' + (n === 1 ? '' : 's') + ' of ' + label + ' revoked.');
        });
      }).catch(function (err) { fail(err, 'Revoking the sessions of ' + label); });
  }

  $('revoke-user').addEventListener('click', function () {
    var userId = $('revoke-user').dataset.userId;
    revokeUser(userId, 'user ' + userId);
  });

  $('revoke-order').addEventListener('submit', function (event) {
    event.preventDefault();
    var orderId = $('order-id').value.trim();
    confirmAction('Revoke every session whose active order is ' + orderId + '?', 'Revoke all').then(function (ok) {
      if (!ok) return;
      return gql('mutation($id: ID!) { revokeSessionsByActiveOrder(orderId: $id) }', { id: orderId }).then(function (r) {
        var n = r.data.revokeSessionsByActiveOrder;
        $('order-id').value = '';
        return afterRevocation(n + ' session' + (n === 1 ? '' : 's') + ' of order ' + orderId + ' revoked.');
      });
    }).catch(function (err) { fail(err, 'Revoking the sessions of order ' + orderId); });
  });

  // ---- Users --------------------------------------------------------------------------------

  var USERS = 'query($first: Int, $after: String) { users(first: $first, after: $after) { totalCount ' +
    'pageInfo { hasNextPage endCursor } nodes { id identifier verified createdAt lastLoginAt activeSessionCount roles { code } } } }';

  function loadUsers() {
    var p = state.users;
    return gql(USERS, { first: 25, after: p.cursors[p.page] }).then(function (r) {
      var conn = r.data.users;
      var body = $('users').tBodies[0];
      body.textContent = '';
      conn.nodes.forEach(function (u) {
        var actions = el('td', { className: 'row-actions', 'data-label': 'Actions' });
        if (has('READ_SESSION')) {
          actions.appendChild(el('button', {
            type: 'button', className: 'user-sessions', text: 'Sessions',
            'aria-label': 'Show the sessions of ' + u.identifier, dataset: { userId: u.id }
          }));
        }
        actions.appendChild(el('button', {
          type: 'button', className: 'revoke-user', text: 'Revoke all',
          'aria-label': 'Revoke every session of ' + u.identifier, dataset: { userId: u.id, identifier: u.identifier }
        }));
        body.appendChild(el('tr', { dataset: { userId: u.id } }, [
          cell('Identifier', u.identifier, el('span', { className: 'id', text: 'user ' + u.id })),
          cell('Verified', u.verified ? 'yes' : 'no'),
          cell('Roles', u.roles.map(function (x) { return x.code; }).join(', ') || '—'),
          cell('Live sessions', String(u.activeSessionCount)),
          cell('Created', when(u.createdAt)),
          cell('Last login', when(u.lastLoginAt)),
          actions
        ]));
      });
      $('users-count').textContent = conn.totalCount + ' user' + (conn.totalCount === 1 ? '' : 's') + '.';
      p.cursors[p.page + 1] = conn.pageInfo.endCursor;
      $('users-prev').disabled = p.page === 0;
      $('users-next').disabled = !conn.pageInfo.hasNextPage;
      $('users-page').textContent = 'Page ' + (p.page + 1);
    }).catch(function (err) { fail(err, 'Loading users'); });
  }

  $('users').addEventListener('click', function (event) {
    var button = event.target.closest('button');
    if (!button) return;
    if (button.classList.contains('user-sessions')) showUserSessions(button.dataset.userId);
    if (button.classList.contains('revoke-user')) revokeUser(button.dataset.userId, button.dataset.identifier);
  });
  $('users-prev').addEventListener('click', function () {
    if (state.users.page > 0) { state.users.page -= 1; loadUsers(); }
  });
  $('users-next').addEventListener('click', function () {
    state.users.page += 1;
    loadUsers();
  });

  // ---- Start --------------------------------------------------------------------------------

  if (state.token) start(); else signedOut();
})();
