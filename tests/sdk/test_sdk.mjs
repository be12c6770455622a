// The official Sprites JS SDK (@fly/sprites 0.1.0, from npm) on Node 24 against a
// sprite daemon, with and without controlMode. docs/sdk-compat.md maps each method
// to its line here, and lists the methods this suite does not cover yet.
//
// Env: SPRITES_API_URL, SPRITE_TOKEN, SPRITES_JS_SDK (path of the package's
// dist/index.js), SPRITES_CONTROL_MODE=1 for control mode. Exits non-zero on the
// first failure.
import assert from 'node:assert/strict';
import net from 'node:net';

const { SpritesClient, ExecError } = await import(process.env.SPRITES_JS_SDK);
const URL = process.env.SPRITES_API_URL;
const TOKEN = process.env.SPRITE_TOKEN;
const CONTROL = process.env.SPRITES_CONTROL_MODE === '1';
const NAME = CONTROL ? 'js-control' : 'js-compat';

const client = new SpritesClient(TOKEN, { baseURL: URL, controlMode: CONTROL });

async function collect(stream) {
  const events = [];
  for await (const event of stream) events.push(event);
  return events;
}

async function rejects(promise, check) {
  try {
    await promise;
  } catch (error) {
    check(error);
    return;
  }
  throw new Error('expected a rejection');
}

const sprite = await client.createSprite(NAME);
try {
  assert.equal(sprite.name, NAME);
  assert.equal(sprite.useControlMode(), CONTROL);

  // Exec: execFile, exec, spawn, execFileHTTP.
  let result = await sprite.execFile('echo', ['hello']);
  assert.equal(result.stdout, 'hello\n');
  assert.equal(result.exitCode, 0);
  // exec() splits its string on spaces (no shell), as the SDK documents.
  result = await sprite.exec('pwd', { cwd: '/tmp' });
  assert.equal(result.stdout, '/tmp\n');
  result = await sprite.execFile('bash', ['-c', 'echo $GREETING'], { env: { GREETING: 'hi' } });
  assert.equal(result.stdout, 'hi\n');
  await rejects(sprite.execFile('bash', ['-c', 'echo oops >&2; exit 42']), (error) => {
    assert.ok(error instanceof ExecError, String(error));
    assert.equal(error.result?.exitCode ?? error.exitCode, 42);
  });
  if (CONTROL) assert.ok(sprite.hasControlConnection(), 'control mode did not keep a connection');

  const cmd = sprite.spawn('cat', []);
  const chunks = [];
  cmd.stdout.on('data', (chunk) => chunks.push(chunk));
  const exited = new Promise((resolve, reject) => { cmd.on('exit', resolve); cmd.on('error', reject); });
  await new Promise((resolve, reject) => { cmd.once('spawn', resolve); cmd.once('error', reject); });
  cmd.stdin.write('piped through\n');
  cmd.stdin.end();
  assert.equal(await exited, 0);
  assert.equal(Buffer.concat(chunks).toString(), 'piped through\n');

  // A TTY command's exit code comes from the close code.
  for (const code of [0, 3]) {
    const tty = sprite.spawn('bash', ['-c', `exit ${code}`], { tty: true });
    const done = new Promise((resolve, reject) => { tty.on('exit', resolve); tty.on('error', reject); });
    assert.equal(await done, code === 0 ? 0 : 1, `tty exit ${code}`);
  }

  result = await sprite.execFileHTTP('bash', ['-c', 'echo http; echo err >&2']);
  assert.equal(result.stdout, 'http\n');
  assert.equal(result.stderr, 'err\n');
  await rejects(sprite.execFileHTTP('no-such-program'), (error) => {
    assert.ok(error instanceof ExecError, String(error));
  });

  // Sessions: a detachable TTY command outlives its client; list, then kill.
  const session = sprite.createSession('bash', ['-c', 'echo waiting; exec sleep 600']);
  await new Promise((resolve, reject) => { session.stdout.once('data', resolve); session.once('error', reject); });
  let sessions = await sprite.listSessions();
  const listed = sessions.find((s) => String(s.command).includes('sleep 600'));
  assert.ok(listed, JSON.stringify(sessions));
  const killed = await collect(await sprite.killSession(listed.id, 'SIGTERM', '5s'));
  const kinds = killed.map((e) => e.type);
  assert.equal(kinds[0], 'signal', JSON.stringify(killed));
  assert.equal(kinds.at(-1), 'complete');
  assert.ok(kinds.includes('exited'), JSON.stringify(killed));

  // File system.
  const fs = sprite.filesystem('/home/sprite');
  await fs.mkdir('proj/src', { recursive: true });
  await fs.writeFile('proj/src/main.txt', 'one\n');
  await fs.appendFile('proj/src/main.txt', 'two\n');
  assert.equal(await fs.readFile('proj/src/main.txt', 'utf8'), 'one\ntwo\n');
  assert.deepEqual((await fs.readdir('proj/src')).sort(), ['main.txt']);
  const stat = await fs.stat('proj/src/main.txt');
  assert.ok(stat.isFile() && !stat.isDirectory(), JSON.stringify(stat));
  assert.equal(stat.size, 8);
  // stat of a directory lists it (all three SDKs send the same request for stat and
  // readdir; docs/sdk-compat.md): it exists while it has entries.
  assert.ok(await fs.exists('proj/src'));
  // mkdir without `recursive` is a write of DIR/.keep without mkdirParents: made.
  await fs.mkdir('proj/plain');
  assert.deepEqual(await fs.readdir('proj/plain'), []);
  await fs.rm('proj/plain');
  await fs.copyFile('proj/src/main.txt', 'proj/src/copy.txt');
  await fs.rename('proj/src/copy.txt', 'proj/src/moved.txt');
  await fs.chmod('proj/src/moved.txt', 0o755);
  assert.equal((await fs.stat('proj/src/moved.txt')).mode & 0o777, 0o755);
  await fs.writeJSON('proj/data.json', { a: 1 });
  assert.deepEqual(await fs.readJSON('proj/data.json'), { a: 1 });
  assert.ok(await fs.exists('proj/src/moved.txt'));
  assert.ok(!(await fs.exists('proj/nope')));
  // Watch: subscribed, then {type: 'event', event, path, isDir, timestamp}.
  const watcher = await fs.watch('proj/src', { recursive: true });
  assert.equal((await watcher.next()).type, 'subscribed');
  await sprite.execFile('bash', ['-c', 'echo x > /home/sprite/proj/src/new.txt']);
  const created = await watcher.next();
  assert.equal(created.type, 'event', JSON.stringify(created));
  assert.equal(created.event, 'create');
  assert.equal(created.path, '/home/sprite/proj/src/new.txt');
  assert.equal(created.isDir, false);
  watcher.close();
  await fs.rm('proj', { recursive: true });
  assert.ok(!(await fs.exists('proj')));

  // Checkpoints.
  await sprite.execFile('bash', ['-c', 'echo one > /home/sprite/state']);
  const made = await collect(await sprite.createCheckpoint('js-first'));
  assert.equal(made.at(-1).type, 'complete', JSON.stringify(made));
  const checkpoints = await sprite.listCheckpoints();
  const first = checkpoints.find((c) => c.comment === 'js-first');
  assert.ok(first, JSON.stringify(checkpoints));
  assert.equal((await sprite.getCheckpoint(first.id)).id, first.id);
  await sprite.execFile('bash', ['-c', 'echo two > /home/sprite/state']);
  const restored = await collect(await sprite.restoreCheckpoint(first.id));
  assert.equal(restored.at(-1).type, 'complete', JSON.stringify(restored));
  assert.equal((await sprite.execFile('cat', ['/home/sprite/state'])).stdout, 'one\n');
  const lineage = await sprite.listCheckpoints('true');
  assert.equal(lineage[0].id, 'Current', JSON.stringify(lineage));
  assert.equal(lineage[0].sourceId, first.id, JSON.stringify(lineage));

  // Services: integer-ms timestamps, stop/restart/logs streams.
  const script = "trap 'echo hup' HUP; echo tick; while true; do sleep 0.2; done";
  let events = await collect(await sprite.createService('ticker', { cmd: 'bash', args: ['-c', script] }, '1s'));
  assert.equal(events[0].type, 'started', JSON.stringify(events));
  assert.ok(events.every((e) => Number.isInteger(e.timestamp) && e.timestamp > 1.6e12), JSON.stringify(events));
  assert.ok(events.some((e) => e.type === 'stdout' && e.data === 'tick\n'), JSON.stringify(events));
  assert.equal(events.at(-1).logFiles?.combined, '/.sprite/logs/services/ticker.log');
  assert.deepEqual((await sprite.listServices()).map((s) => s.name), ['ticker']);
  assert.equal((await sprite.getService('ticker')).state.status, 'running');
  await sprite.signalService('ticker', 'HUP');
  events = await collect(await sprite.getServiceLogs('ticker', { lines: 10 }));
  assert.ok(events.some((e) => e.type === 'stdout' && e.data.includes('tick')), JSON.stringify(events));
  events = await collect(await sprite.stopService('ticker', '2s'));
  assert.deepEqual(events.map((e) => e.type), ['stopping', 'exit', 'stopped', 'complete']);
  events = await collect(await sprite.startService('ticker'));
  assert.equal(events[0].type, 'started');
  events = await collect(await sprite.restartService('ticker', '500ms'));
  assert.ok(events.map((e) => e.type).includes('stopped'), JSON.stringify(events));
  await sprite.deleteService('ticker');
  assert.deepEqual(await sprite.listServices(), []);

  // Network policy (POST answers 204).
  await sprite.updateNetworkPolicy({ rules: [{ domain: '*.example.com', action: 'allow' }, { include: 'defaults' }] });
  const policy = await sprite.getNetworkPolicy();
  assert.equal(policy.rules[0].domain, '*.example.com', JSON.stringify(policy));
  await sprite.updateNetworkPolicy({ rules: [] });

  // Resources (live) and privileges policies.
  const resources = await sprite.getResourcesPolicy();
  assert.ok(resources.memory.limitMB >= 64, JSON.stringify(resources));
  await sprite.updateResourcesPolicy({ memory: { limitMB: 768 } });
  assert.equal((await sprite.getResourcesPolicy()).memory.limitMB, 768);
  await sprite.deleteResourcesPolicy();
  assert.equal((await sprite.getResourcesPolicy()).memory.limitMB, resources.memory.limitMB);
  assert.equal((await sprite.getPrivilegesPolicy()).profile, 'standard');
  await sprite.updatePrivilegesPolicy({ profile: 'standard' });
  await rejects(sprite.updatePrivilegesPolicy({ profile: 'privileged' }), (error) => {
    assert.ok(/standard profile/.test(String(error)), String(error));
  });
  await sprite.deletePrivilegesPolicy();

  // TCP proxy: a local port to a port in the sprite.
  await sprite.createService('echo', { cmd: 'python3', args: ['-c', [
    'import socket',
    's = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)',
    's.bind(("127.0.0.1", 9000)); s.listen()',
    'while True:',
    '    c, _ = s.accept(); c.sendall(c.recv(100)); c.close()',
  ].join('\n')] }, '1s').then(collect);
  const ports = await sprite.watchPorts();
  const portList = await ports.next();
  assert.equal(portList.type, 'port_list', JSON.stringify(portList));
  // 9000 is in the list, or opens soon after (the service may still be starting).
  let seen = portList.ports.some((p) => p.port === 9000);
  while (!seen) {
    const event = await ports.next();
    assert.ok(event, 'the port watch ended before 9000 opened');
    seen = event.type === 'port_opened' && event.port === 9000;
  }
  ports.close();
  const local = 20000 + Math.floor(Math.random() * 20000);
  const proxy = await sprite.proxyPort(local, 9000);
  const echoed = await new Promise((resolve, reject) => {
    const socket = net.connect(local, '127.0.0.1', () => socket.write('through the proxy'));
    let data = '';
    socket.on('data', (chunk) => { data += chunk; });
    socket.on('end', () => resolve(data));
    socket.on('error', reject);
  });
  assert.equal(echoed, 'through the proxy');
  proxy.close?.();
  await sprite.deleteService('echo');

  // Sprite settings and listing.
  await sprite.updateURLSettings({ auth: 'public' });
  let info = await client.getSprite(NAME);
  assert.equal(info.urlSettings?.auth, 'public');
  await client.updateSprite(NAME, { labels: ['js'] });
  info = await client.getSprite(NAME);
  assert.equal(info.urlSettings?.auth, 'public', 'an update of labels reset url_settings');
  assert.deepEqual(info.labels, ['js']);
  const list = await client.listSprites();
  assert.ok(list.sprites.some((s) => s.name === NAME), JSON.stringify(list));
  assert.ok((await client.listAllSprites('js-')).some((s) => s.name === NAME));

  // Counts, health, restart, and the NDJSON watch.
  assert.ok(list.running >= 1 && list.organizationName, JSON.stringify(list));
  const health = await client.checkSprite(NAME);
  assert.equal(health.status, 'healthy', JSON.stringify(health));
  assert.equal((await sprite.check()).spriteName, NAME);
  const stream = await client.watchSprites({ prefix: NAME });
  const firstState = await stream.next();
  assert.equal(firstState.name, NAME, JSON.stringify(firstState));
  assert.ok(firstState.organization.running >= 1, JSON.stringify(firstState));
  stream.close?.();
  const restarted = await client.restartSprite(NAME);
  assert.equal(restarted.spriteName, NAME, JSON.stringify(restarted));
  assert.equal((await sprite.execFile('echo', ['back'])).stdout, 'back\n');
  await sprite.restart();

  // Upgrade: already on the image's newest version, so no change (a real upgrade is
  // tested in crates/sprite/tests/images.rs); the sprite still answers after it.
  await sprite.upgrade();
  const after = await sprite.execFile('echo', ['still here']);
  assert.equal(after.stdout.toString().trim(), 'still here');
} finally {
  await client.deleteSprite(NAME);
}
await rejects(client.getSprite(NAME), () => {});
console.log('js sdk ok');
process.exit(0);
