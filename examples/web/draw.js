// Drawing samples on a canvas: images as a grid (data range -> 0..255), 2-D points as a scatter.

const MAX_SIDE = 512; // the canvas's longest side, in CSS pixels

// `cols`: images per row (default: a square grid); the page passes the per-class count so that
// each row is one class.
export function drawSamples(canvas, samples, shape, dataRange, cols = undefined) {
  if (shape.length === 4) drawImages(canvas, samples, shape, dataRange, cols);
  else drawPoints(canvas, samples, shape);
}

function drawImages(canvas, data, [batch, channels, h, w], [lo, hi], cols = Math.ceil(Math.sqrt(batch))) {
  const rows = Math.ceil(batch / cols);
  const gap = 1;
  const grid = document.createElement('canvas');
  grid.width = cols * (w + gap) - gap;
  grid.height = rows * (h + gap) - gap;
  const g = grid.getContext('2d');
  g.fillStyle = '#444';
  g.fillRect(0, 0, grid.width, grid.height);
  const img = g.createImageData(w, h);
  const plane = h * w;
  const scale = 255 / (hi - lo);
  for (let b = 0; b < batch; b++) {
    const base = b * channels * plane;
    for (let p = 0; p < plane; p++) {
      for (let c = 0; c < 3; c++) {
        const v = data[base + Math.min(c, channels - 1) * plane + p];
        img.data[4 * p + c] = Math.max(0, Math.min(255, Math.round((v - lo) * scale)));
      }
      img.data[4 * p + 3] = 255;
    }
    g.putImageData(img, (b % cols) * (w + gap), Math.floor(b / cols) * (h + gap));
  }
  const zoom = Math.max(1, Math.floor(MAX_SIDE / Math.max(grid.width, grid.height)));
  canvas.width = grid.width * zoom;
  canvas.height = grid.height * zoom;
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingEnabled = false; // pixels stay square
  ctx.drawImage(grid, 0, 0, canvas.width, canvas.height);
}

function drawPoints(canvas, data, [batch, dim]) {
  canvas.width = MAX_SIDE;
  canvas.height = MAX_SIDE;
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  let extent = 0;
  for (let i = 0; i < batch * dim; i++) if (Number.isFinite(data[i])) extent = Math.max(extent, Math.abs(data[i]));
  extent = extent > 0 ? extent * 1.1 : 1;
  const px = (v) => ((v / extent) * 0.5 + 0.5) * canvas.width;
  const py = (v) => (0.5 - (v / extent) * 0.5) * canvas.height;
  ctx.strokeStyle = '#ccc';
  ctx.beginPath();
  ctx.moveTo(0, py(0));
  ctx.lineTo(canvas.width, py(0));
  ctx.moveTo(px(0), 0);
  ctx.lineTo(px(0), canvas.height);
  ctx.stroke();
  ctx.fillStyle = 'rgba(31, 119, 180, 0.6)';
  for (let b = 0; b < batch; b++) {
    const x = data[b * dim];
    const y = dim > 1 ? data[b * dim + 1] : 0;
    ctx.beginPath();
    ctx.arc(px(x), py(y), 2.5, 0, 2 * Math.PI);
    ctx.fill();
  }
  ctx.fillStyle = '#555';
  ctx.font = '12px sans-serif';
  ctx.fillText(`${batch} points, axes ±${extent.toPrecision(2)}${dim > 2 ? ` (first 2 of ${dim} dims)` : ''}`, 8, 16);
}

// The image on `canvas` (any size, e.g. the drawing pad) as one sample [channels, h, w] in
// `dataRange`: scaled to w×h (averaging), black -> lo, white -> hi; one channel: the mean of R, G, B.
export function canvasToSample(canvas, [channels, h, w], [lo, hi]) {
  const small = document.createElement('canvas');
  small.width = w;
  small.height = h;
  const g = small.getContext('2d');
  g.imageSmoothingEnabled = true;
  g.imageSmoothingQuality = 'high';
  g.drawImage(canvas, 0, 0, w, h);
  const px = g.getImageData(0, 0, w, h).data;
  const out = new Float32Array(channels * h * w);
  for (let c = 0; c < channels; c++) {
    for (let p = 0; p < h * w; p++) {
      const v = channels === 1 ? (px[4 * p] + px[4 * p + 1] + px[4 * p + 2]) / 3 : px[4 * p + Math.min(c, 2)];
      out[c * h * w + p] = lo + (v / 255) * (hi - lo);
    }
  }
  return out;
}
