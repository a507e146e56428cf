// GraphiQL's bootstrap for session-server: a fetcher that posts JSON to this page's own URL
// with the browser's cookies (same origin only) and the headers typed in GraphiQL's headers
// editor, runs subscriptions over a WebSocket to the same URL (graphql-transport-ws; the
// cookie goes along, and an Authorization or channel-token header typed in the editor goes in
// the connection_init payload), and an example document for newcomers. Served as a file of its
// own because the page's Content-Security-Policy allows no inline script.
(function () {
  'use strict';

  var EXAMPLE = [
    '# Welcome to session-server. Every file of this page comes from the server itself.',
    '#',
    '# Run the three operations below in order: press the run button (or Ctrl-Enter)',
    '# and pick the operation by name.',
    '#',
    '# 1. StartAnonymous creates an anonymous session. The server answers with its token',
    '#    in the `session-token` response header and sets the `session` cookie, which',
    '#    this page sends back on every request (credentials: same-origin).',
    '# 2. LogIn logs in (here as the default superadmin; change SUPERADMIN_PASSWORD in',
    '#    production). Login always issues a new token: the anonymous session\'s channel',
    '#    and order carry over, and the cookie now holds the new session.',
    '# 3. WhoAmI shows the session this browser now has, through the cookie.',
    '#',
    '# To call as another client, open "Headers" below and send a bearer token:',
    '#   { "Authorization": "Bearer <token>" }',
    '# A bearer token wins over the cookie.',
    '',
    'mutation StartAnonymous {',
    '  createAnonymousSession { id kind expiresAt }',
    '}',
    '',
    'mutation LogIn {',
    '  login(username: "superadmin", password: "superadmin") {',
    '    __typename',
    '    ... on AuthenticationSuccess { user { identifier } session { id kind expiresAt } }',
    '    ... on InvalidCredentialsError { message }',
    '    ... on NotVerifiedError { message }',
    '    ... on TooManyAttemptsError { message retryAfterSeconds }',
    '  }',
    '}',
    '',
    'query WhoAmI {',
    '  activeSession { id kind current user { identifier } createdAt lastActiveAt expiresAt }',
    '  me { identifier channels { channelCode permissions } }',
    '  activeChannel { code }',
    '}',
    '',
    '# 4. LiveEvents streams session events as they happen (it needs READ_SESSION, which the',
    '#    superadmin holds). Run it, then log in from another tab or client: each login shows',
    '#    up here. Press the stop button to end it.',
    'subscription LiveEvents {',
    '  sessionEvents(types: [LOGIN_SUCCEEDED, LOGIN_FAILED, LOGGED_OUT, SESSION_REVOKED]) {',
    '    type at userId identifier ipAddress userAgent channelCode reason',
    '  }',
    '}',
    ''
  ].join('\n');

  // The page is served at the GraphQL endpoint itself (GET with Accept: text/html).
  var endpoint = window.location.pathname;

  function fetcher(params, options) {
    var headers = {
      'content-type': 'application/json',
      accept: 'application/graphql-response+json, application/json'
    };
    var extra = (options && options.headers) || {};
    Object.keys(extra).forEach(function (name) { headers[name] = extra[name]; });
    return fetch(endpoint, {
      method: 'POST',
      credentials: 'same-origin',
      headers: headers,
      body: JSON.stringify(params)
    }).then(function (response) {
      return response.text().then(function (text) {
        try {
          return JSON.parse(text);
        } catch (e) {
          return { errors: [{ message: 'HTTP ' + response.status + ': ' + text }] };
        }
      });
    });
  }

  // The operations of a document: each starts at the top or after a closing brace.
  function operations(query) {
    var text = (query || '').replace(/#[^\n\r]*/g, '');
    var re = /(^|\})\s*(query|mutation|subscription)\b\s*([_A-Za-z][_0-9A-Za-z]*)?/g;
    var ops = [];
    var m;
    while ((m = re.exec(text)) !== null) {
      ops.push({ type: m[2], name: m[3] || null });
    }
    return ops;
  }

  // GraphiQL may keep the name of an operation the editor no longer holds: drop it then.
  function withKnownOperation(params) {
    var ops = operations(params.query);
    var named = ops.filter(function (op) { return op.name === params.operationName; });
    if (params.operationName && named.length === 0) {
      var copy = {};
      Object.keys(params).forEach(function (k) {
        if (k !== 'operationName') { copy[k] = params[k]; }
      });
      return { params: copy, op: ops.length === 1 ? ops[0] : null };
    }
    return { params: params, op: params.operationName ? named[0] : (ops.length === 1 ? ops[0] : null) };
  }

  var socketUrl = (window.location.protocol === 'https:' ? 'wss://' : 'ws://') +
    window.location.host + endpoint;

  // A subscription as an observable GraphiQL understands, over graphql-transport-ws.
  function subscribeOverSocket(params, extra) {
    return {
      subscribe: function (observer) {
        var socket = new WebSocket(socketUrl, 'graphql-transport-ws');
        var done = false;
        function finish() {
          if (done) { return; }
          done = true;
          try { socket.close(1000); } catch (e) { /* already closed */ }
          observer.complete();
        }
        socket.onopen = function () {
          var payload = {};
          Object.keys(extra).forEach(function (name) {
            var lower = name.toLowerCase();
            if (lower === 'authorization' || lower === 'channel-token') {
              payload[lower] = extra[name];
            }
          });
          socket.send(JSON.stringify({ type: 'connection_init', payload: payload }));
        };
        socket.onmessage = function (event) {
          var msg;
          try { msg = JSON.parse(event.data); } catch (e) { return; }
          if (msg.type === 'connection_ack') {
            socket.send(JSON.stringify({ id: '1', type: 'subscribe', payload: params }));
          } else if (msg.type === 'ping') {
            socket.send(JSON.stringify({ type: 'pong' }));
          } else if (msg.type === 'next') {
            observer.next(msg.payload);
          } else if (msg.type === 'error') {
            observer.next({ errors: msg.payload });
            finish();
          } else if (msg.type === 'complete') {
            finish();
          }
        };
        socket.onclose = function (event) {
          if (done) { return; }
          if (event.code !== 1000) {
            observer.next({ errors: [{ message: 'the subscription was closed: ' + event.code +
              (event.reason ? ' ' + event.reason : '') }] });
          }
          finish();
        };
        return {
          unsubscribe: function () {
            if (done) { return; }
            done = true;
            if (socket.readyState === WebSocket.OPEN) {
              socket.send(JSON.stringify({ id: '1', type: 'complete' }));
            }
            socket.close(1000);
          }
        };
      }
    };
  }

  function fetchOrSubscribe(params, options) {
    var known = withKnownOperation(params);
    if (known.op && known.op.type === 'subscription') {
      return subscribeOverSocket(known.params, (options && options.headers) || {});
    }
    return fetcher(known.params, options);
  }

  var root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(React.createElement(GraphiQL, {
    fetcher: fetchOrSubscribe,
    defaultQuery: EXAMPLE,
    isHeadersEditorEnabled: true,
    shouldPersistHeaders: false
  }));
})();
