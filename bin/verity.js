#!/usr/bin/env node
import { main } from '../dist/src/client/cli.js';

await main(process.argv);
