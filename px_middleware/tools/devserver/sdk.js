/*
 * px_middleware devserver: a stand-in for the Gainsight PX web SDK.
 *
 * It tracks nothing. It takes over window.aptrinsic, replays the calls the loader
 * stub queued on aptrinsic.q, and records every call: in window.__pxCalls (for a
 * browser test to read) and by POSTing it to /sdk/calls on the devserver that served
 * this script, whose origin is read from this script's own src.
 */
(function (window, document) {
  "use strict";
  var script = document.currentScript;
  var src = new URL(script && script.src ? script.src : "/api/aptrinsic.js", window.location.href);
  var endpoint = src.origin + "/sdk/calls";
  var stub = window.aptrinsic;
  var productKey = src.searchParams.get("a") || (stub && stub.p) || null;
  var calls = (window.__pxCalls = window.__pxCalls || []);

  function describe(args) {
    return {
      method: args.length ? String(args[0]) : null,
      args: args.slice(1),
      productKey: productKey,
      url: window.location.href
    };
  }

  function post(payload) {
    var body;
    try {
      body = JSON.stringify(payload);
    } catch (e) {
      return; // cyclic arguments: kept in __pxCalls only
    }
    if (typeof window.fetch !== "function") {
      return;
    }
    // text/plain keeps this a CORS "simple request": no preflight from the page's
    // origin. keepalive lets a call made just before navigation still arrive.
    window
      .fetch(endpoint, {
        method: "POST",
        body: body,
        mode: "cors",
        credentials: "omit",
        keepalive: true,
        headers: { "Content-Type": "text/plain;charset=UTF-8" }
      })
      .catch(function () {});
  }

  function aptrinsic() {
    var call = describe(Array.prototype.slice.call(arguments));
    calls.push(call);
    post(call);
  }

  if (stub) {
    aptrinsic.p = stub.p; // product key and loader config, as the stub stored them
    aptrinsic.c = stub.c;
  }
  window.aptrinsic = aptrinsic;

  // The queued calls go in one request, so the devserver stores them in call order.
  var queued = [];
  var q = (stub && stub.q) || [];
  for (var i = 0; i < q.length; i++) {
    queued.push(describe(Array.prototype.slice.call(q[i])));
  }
  if (queued.length) {
    Array.prototype.push.apply(calls, queued);
    post(queued);
  }
})(window, document);
