export function decodeGrid(base64: string, layers: number, heads: number, length: number): Float32Array[][];
