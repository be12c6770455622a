// Exec `true` from @fly/sprites: a fresh exec WebSocket per command (plain) vs the
// reused control connection (controlMode). Prints one JSON object.
const { SpritesClient } = await import(process.env.SPRITES_JS_SDK);
const URL = process.env.SPRITES_API_URL;
const TOKEN = process.env.SPRITE_TOKEN;
const NAME = process.argv[2];
const ROUNDS = Number(process.env.ROUNDS ?? 10);
const PER_ROUND = Number(process.env.PER_ROUND ?? 20);

const clients = {
  plain: new SpritesClient(TOKEN, { baseURL: URL }),
  control: new SpritesClient(TOKEN, { baseURL: URL, controlMode: true }),
};
const sprites = Object.fromEntries(Object.entries(clients).map(([m, c]) => [m, c.sprite(NAME)]));
const samples = { plain: [], control: [] };
for (const sprite of Object.values(sprites)) {
  for (let i = 0; i < 5; i++) await sprite.execFile('true');
}
for (let round = 0; round < ROUNDS; round++) {
  for (const [mode, sprite] of Object.entries(sprites)) {
    for (let i = 0; i < PER_ROUND; i++) {
      const started = performance.now();
      await sprite.execFile('true');
      samples[mode].push(performance.now() - started);
    }
  }
}
if (!sprites.control.hasControlConnection()) throw new Error('control mode was not used');
const summary = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length / 2;
  const p50 = sorted.length % 2 ? sorted[Math.floor(mid)] : (sorted[mid - 1] + sorted[mid]) / 2;
  const p99 = sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.99))];
  return { n: sorted.length, p50_ms: Number(p50.toFixed(3)), p99_ms: Number(p99.toFixed(3)) };
};
console.log(JSON.stringify({ client: '@fly/sprites 0.1.0', plain: summary(samples.plain), control: summary(samples.control) }));
sprites.control.closeControlConnection?.();
process.exit(0);
